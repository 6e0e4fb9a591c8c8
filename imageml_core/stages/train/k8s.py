"""Stage 3 scale-out on Kubernetes: the objects that run one training job as an Indexed Job.

``TRAIN_INSTANCES`` pods, one per instance, run ``torchrun`` (``torch.distributed.run``)
with a static rendezvous: pod ``i`` is node rank ``i`` (its Job completion index) and every
pod finds rank 0 at ``<job>-0.<service>``, the DNS name a headless Service gives pod 0 of
an Indexed Job whose pods set ``subdomain`` to that Service (Kubernetes docs, "Job with
Pod-to-Pod Communication"). Splitting the data by rank and logging to MLflow from rank 0
only are the worker's part (``imageml_core.stages.train.worker``).

Plain Python returning dicts (no Kubernetes client, no Dagster), so the objects can be
checked offline with ``kubernetes-validate`` and applied by whatever launches them.
Secrets reach the pods only through ``envFrom`` of a Kubernetes Secret, never inline.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

NVME_ROOT = "/mnt/nvme"
"""Where the node's NVMe is mounted inside the pod (``NVME_ROOT`` of the worker)."""
CONFIG_DIR = "/config"
CONFIG_FILE = "train.json"
CONTAINER = "trainer"
WORKER_MODULE = "imageml_core.stages.train.worker"
NVME_LABEL = "imageml.io/nvme"
JOB_LABEL = "imageml.io/training-job"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
GPU_RESOURCE = "nvidia.com/gpu"
INDEX_ENV = "JOB_COMPLETION_INDEX"
# Downward API source of the index (Kubernetes docs, "Indexed Job for Parallel Processing
# with Static Work Assignment"); the Job controller adds the same variable when it is absent.
INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"

# Kubernetes caps a label (and a pod hostname) at 63 characters; the pods of an Indexed Job
# are named <job>-<index>, so the job name keeps room for the index, like CronJob's 52.
MAX_NAME = 52
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Variables whose name says they hold a credential: they belong in the Secret.
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|PRIVATE_KEY|API_KEY")
# Set by the builder itself; a caller's value would contradict the wiring.
_RESERVED_ENV = frozenset(
    {INDEX_ENV, "NVME_ROOT", "TRAIN_INSTANCES", "HOME", "TMPDIR", "PYTHONUNBUFFERED"}
)
_APP_LABELS = {"app.kubernetes.io/name": "imageml", "app.kubernetes.io/component": "train"}
_CONFIGMAP_MAX_BYTES = 1024 * 1024  # Kubernetes refuses larger ConfigMaps
# A URL carrying a user name or password (scheme://user:password@host).
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s\"'@]+@")


def sanitize_name(name: str) -> str:
    """``name`` as a DNS-1035 label (so valid as a DNS-1123 label and a Service name):
    lower case, runs of other characters turned into ``-``, a ``t-`` prefix when it does not
    start with a letter, at most :data:`MAX_NAME` characters (a cut name ends in 8 hex of
    SHA-256 of the original, so two long names stay apart). Raises ValueError when nothing
    usable is left."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not cleaned:
        raise ValueError(f"job name {name!r} has no letters or digits")
    if not cleaned[0].isalpha():
        cleaned = f"t-{cleaned}"
    if len(cleaned) > MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        cleaned = f"{cleaned[: MAX_NAME - 9].rstrip('-')}-{digest}"
    return cleaned


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check(pattern: re.Pattern[str], value: str, what: str, max_len: int) -> None:
    ok = len(value) <= max_len and pattern.match(value) is not None
    _require(ok, f"{what} {value!r} is not a valid Kubernetes name (max {max_len})")


def _cpu(cores: float) -> str:
    """CPU cores as a Kubernetes quantity: whole cores as ``"2"``, else millicores."""
    millis = round(cores * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


@dataclass(frozen=True)
class TrainingJobSpec:
    """One distributed training job on Kubernetes; :func:`build_training_objects` turns it
    into a headless Service, a ConfigMap and an Indexed Job.

    ``name`` the job name, sanitized by :func:`sanitize_name` (the Service shares it; the
    ConfigMap is ``<name>-config``); ``image`` the trainer image; ``trainer_config`` the JSON
    the worker reads from ``/config/train.json``; ``instances`` pods, one torchrun node
    each (``TRAIN_INSTANCES``). Resources per pod: ``cpu_request``/``cpu_limit`` in CPU
    cores (limit None: no CPU cap, so the pod is not throttled), ``memory_request_mib``/
    ``memory_limit_mib`` in MiB (limit None: the request), ``gpus`` ``nvidia.com/gpu``
    (0 = none, at most 1: one training process per pod; scale with ``instances``),
    ``shm_mib`` the in-memory ``/dev/shm`` for DataLoader workers (counts toward memory).
    Placement: nodes labelled ``imageml.io/nvme=true`` (tolerating the same taint), of
    ``instance_type`` when set; ``nvme_host_path`` is mounted at ``/mnt/nvme``. ``secret_name``
    the Secret whose keys become env vars (``envFrom``: credentials, an MLflow URI with a
    password); ``env_config_map`` an optional ConfigMap likewise; ``env`` plain non-secret
    variables (``TRAIN_*``, a credential-free ``MLFLOW_TRACKING_URI``; ``$`` kept literal).
    ``max_minutes`` the training-loop budget (None or 0: no deadline); the Job's
    ``activeDeadlineSeconds`` is that plus ``deadline_margin_minutes`` for staging,
    evaluation and upload. ``ttl_seconds_after_finished`` seconds the finished Job and its
    pods stay for inspection.

    Raises ValueError (from construction) for an invalid name, namespace or resource, or a
    credential in ``env`` (a URL with userinfo, a PASSWORD/SECRET/TOKEN-like name) or config.
    """

    name: str
    image: str
    trainer_config: Mapping[str, Any]
    namespace: str = "default"
    instances: int = 1
    cpu_request: float = 2.0
    cpu_limit: float | None = None
    memory_request_mib: int = 8192
    memory_limit_mib: int | None = None
    gpus: int = 0
    instance_type: str = ""
    nvme_host_path: str = NVME_ROOT
    secret_name: str = "imageml-secrets"
    env_config_map: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    service_account: str = "imageml-dagster"
    max_minutes: float | None = None
    deadline_margin_minutes: float = 30.0
    ttl_seconds_after_finished: int = 86400
    shm_mib: int = 1024
    run_as_user: int = 1000
    read_only_root_filesystem: bool = True
    image_pull_policy: str = "IfNotPresent"
    master_port: int = 29500
    termination_grace_seconds: int = 60

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", sanitize_name(self.name))
        _check(_DNS_LABEL, self.namespace, "namespace", 63)
        _check(_DNS_SUBDOMAIN, self.secret_name, "secret name", 253)
        _check(_DNS_SUBDOMAIN, self.service_account, "service account", 253)
        if self.env_config_map is not None:
            _check(_DNS_SUBDOMAIN, self.env_config_map, "config map", 253)
        if self.instance_type:
            _check(_LABEL_VALUE, self.instance_type, "instance type", 63)
        image, pull = self.image, self.image_pull_policy
        _require(bool(image) and not any(c.isspace() for c in image), f"bad image {image!r}")
        _require(pull in ("Always", "IfNotPresent", "Never"), f"bad pull policy {pull!r}")
        _require(self.nvme_host_path.startswith("/"), "nvme_host_path must be absolute")
        self._check_numbers()
        self._check_env()
        self._check_config()

    def _check_numbers(self) -> None:
        _require(self.instances >= 1, f"instances must be at least 1, got {self.instances}")
        _require(
            0 <= self.gpus <= 1,
            f"gpus per instance must be 0 or 1, got {self.gpus}: each pod runs one training "
            "process; use more instances instead (pods may share a multi-GPU node)",
        )
        cpu, cpu_limit = self.cpu_request, self.cpu_limit
        _require(0.001 <= cpu < math.inf, f"cpu_request must be >= 0.001 cores, got {cpu}")
        ok_limit = cpu_limit is None or cpu <= cpu_limit < math.inf
        _require(ok_limit, f"cpu_limit {cpu_limit} must be finite and >= cpu_request")
        memory, limit = self.memory_request_mib, self.memory_limit
        _require(1 <= memory <= limit, "memory request must be >= 1 MiB and <= the limit")
        _require(0 < self.shm_mib < limit, f"shm_mib {self.shm_mib} must be below the limit")
        budget, margin = self.max_minutes, self.deadline_margin_minutes
        _require(budget is None or 0 <= budget < math.inf, f"bad max_minutes {budget}")
        _require(0 <= margin < math.inf, f"bad deadline_margin_minutes {margin}")
        _require(1 <= self.master_port <= 65535, f"bad master_port {self.master_port}")
        seconds = min(self.ttl_seconds_after_finished, self.termination_grace_seconds)
        _require(seconds >= 0, "ttl_seconds_after_finished and grace seconds must be >= 0")
        _require(self.run_as_user >= 1, "run_as_user must be a non-root uid (>= 1)")

    def _check_env(self) -> None:
        into_secret = f"put it in the Kubernetes Secret {self.secret_name!r} (envFrom) instead"
        for key, value in self.env.items():
            _require(bool(_ENV_NAME.match(key)), f"env name {key!r} is not a variable name")
            _require(key not in _RESERVED_ENV, f"env {key} is set by the job builder")
            _require(isinstance(value, str), f"env {key} must be a string")
            # A secret-sounding name, or a URL with a password (MLFLOW_TRACKING_URI, a DB URL).
            secret = _USERINFO.search(value) or _SECRET_NAME.search(key.upper())
            _require(not secret, f"env {key} holds a credential; {into_secret}")

    def _check_config(self) -> None:
        try:
            text = self.config_json
        except (TypeError, ValueError) as exc:
            raise ValueError(f"trainer_config is not JSON-serializable: {exc}") from exc
        _require(len(text.encode()) <= _CONFIGMAP_MAX_BYTES, "trainer_config exceeds 1 MiB")
        into_secret = f"a ConfigMap is not secret: use the Secret {self.secret_name!r}"
        _require(not _USERINFO.search(text), f"trainer_config has a credential; {into_secret}")

    @property
    def memory_limit(self) -> int:
        """The memory limit in MiB (the request when no limit was given)."""
        limit = self.memory_limit_mib
        return self.memory_request_mib if limit is None else limit

    @property
    def service_name(self) -> str:
        """The headless Service, also the pods' ``subdomain``."""
        return self.name

    @property
    def config_map_name(self) -> str:
        """The ConfigMap holding ``train.json``."""
        return f"{self.name}-config"

    @property
    def master_addr(self) -> str:
        """Rank 0's DNS name: pod 0 of the Indexed Job under the headless Service (resolves
        from any pod of the namespace)."""
        return f"{self.name}-0.{self.service_name}"

    @property
    def out_dir(self) -> str:
        """Where each pod writes, on the node's NVMe; per rank, as pods may share a node."""
        return f"{NVME_ROOT}/output/{self.name}/rank-$({INDEX_ENV})"

    @property
    def config_json(self) -> str:
        """The trainer configuration as written to the ConfigMap (sorted keys)."""
        return json.dumps(self.trainer_config, indent=2, sort_keys=True, allow_nan=False)

    @property
    def active_deadline_seconds(self) -> int | None:
        """``max_minutes`` plus the margin, in seconds; None without a budget."""
        if not self.max_minutes:
            return None
        return math.ceil((self.max_minutes + self.deadline_margin_minutes) * 60)

    def torchrun_args(self) -> list[str]:
        """The container's args: torchrun with a static rendezvous at :attr:`master_addr`,
        node rank from ``$(JOB_COMPLETION_INDEX)`` (expanded by the kubelet from the
        container's env, so no shell is needed), then the worker module."""
        launcher = ["python", "-m", "torch.distributed.run", f"--nnodes={self.instances}"]
        rank = ["--nproc-per-node=1", f"--node-rank=$({INDEX_ENV})"]
        master = [f"--master-addr={self.master_addr}", f"--master-port={self.master_port}"]
        worker = ["-m", WORKER_MODULE, "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]
        return [*launcher, *rank, *master, *worker, "--out", self.out_dir]


def _labels(spec: TrainingJobSpec) -> dict[str, str]:
    return {**_APP_LABELS, JOB_LABEL: spec.name}


def _object(job: TrainingJobSpec, api: str, kind: str, name: str, **body: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": job.namespace, "labels": _labels(job)}
    return {"apiVersion": api, "kind": kind, "metadata": meta, **body}


def _container(spec: TrainingJobSpec) -> dict[str, Any]:
    requests = {"cpu": _cpu(spec.cpu_request), "memory": f"{spec.memory_request_mib}Mi"}
    limits: dict[str, Any] = {"memory": f"{spec.memory_limit}Mi"}
    if spec.cpu_limit is not None:
        limits["cpu"] = _cpu(spec.cpu_limit)
    if spec.gpus:
        # Extended resources are set as limits; the request defaults to the limit.
        limits[GPU_RESOURCE] = spec.gpus
    env: list[dict[str, Any]] = [
        # Declared here so $(JOB_COMPLETION_INDEX) in args expands on every version.
        {"name": INDEX_ENV, "valueFrom": {"fieldRef": {"fieldPath": INDEX_FIELD}}},
        {"name": "TRAIN_INSTANCES", "value": str(spec.instances)},
        {"name": "NVME_ROOT", "value": NVME_ROOT},
        # The root filesystem is read-only: caches (torch, matplotlib, MLflow) go to /tmp.
        {"name": "HOME", "value": "/tmp"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    # Kubernetes expands $(VAR) in env values and turns $$ into $, so a literal $ is doubled
    # (Kubernetes docs, "Define Dependent Environment Variables").
    env += [{"name": k, "value": v.replace("$", "$$")} for k, v in sorted(spec.env.items())]
    env_from: list[dict[str, Any]] = []
    if spec.env_config_map:
        env_from.append({"configMapRef": {"name": spec.env_config_map}})
    env_from.append({"secretRef": {"name": spec.secret_name}})  # the Secret wins on overlap
    return {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        # No `command`: the image's ENTRYPOINT (if any) ends in exec "$@" (stage convention).
        "args": spec.torchrun_args(),
        "env": env,
        "envFrom": env_from,
        "ports": [{"name": "rendezvous", "containerPort": spec.master_port}],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [
            {"name": "nvme", "mountPath": NVME_ROOT},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": spec.read_only_root_filesystem,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _pod_spec(spec: TrainingJobSpec) -> dict[str, Any]:
    node_selector = {NVME_LABEL: "true"}
    if spec.instance_type:
        node_selector[INSTANCE_TYPE_LABEL] = spec.instance_type
    tolerations: list[dict[str, Any]] = [
        {"key": NVME_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    ]
    if spec.gpus:
        # GPU node groups are commonly tainted nvidia.com/gpu:NoSchedule.
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    host_path = {"path": spec.nvme_host_path, "type": "DirectoryOrCreate"}
    return {
        # podFailurePolicy requires Never: a failed rank is a failed job, not a restart.
        "restartPolicy": "Never",
        "subdomain": spec.service_name,
        "serviceAccountName": spec.service_account,
        # The trainer never calls the API server (IRSA-style identities mount their own token).
        "automountServiceAccountToken": False,
        # No <SERVICE>_PORT variables from every Service of the namespace in the env.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.termination_grace_seconds,
        "nodeSelector": node_selector,
        "tolerations": tolerations,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": spec.run_as_user,
            "runAsGroup": spec.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec)],
        "volumes": [
            {"name": "nvme", "hostPath": host_path},
            {"name": "config", "configMap": {"name": spec.config_map_name}},
            {"name": "tmp", "emptyDir": {}},
            # The container default /dev/shm (64 MiB) is too small for DataLoader workers.
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{spec.shm_mib}Mi"}},
        ],
    }


def build_training_objects(spec: TrainingJobSpec) -> list[dict[str, Any]]:
    """The objects to apply, in order: the headless Service (``clusterIP: None``, publishing
    not-ready pods so rank 0 resolves before it is Ready), the ConfigMap with
    ``train.json``, and the Indexed Job (``completions = parallelism = instances``,
    ``backoffLimit`` 0). The Job's failure policy: a disrupted pod (preemption, eviction,
    node drain) is replaced without counting; any non-zero exit of the trainer fails the
    whole job at once, since DDP ranks cannot continue without a peer (Kubernetes docs,
    "Handling retriable and non-retriable pod failures with Pod failure policy"). All carry
    the label ``imageml.io/training-job=<name>``; the Service and ConfigMap are not owned by
    the Job, so delete them by that label."""
    labels = _labels(spec)
    # Disruption first: a disrupted pod's container also exits non-zero (143 on SIGTERM).
    disrupted = [{"type": "DisruptionTarget", "status": "True"}]
    ignore_disruption = {"action": "Ignore", "onPodConditions": disrupted}
    exit_codes = {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}
    fail_on_error = {"action": "FailJob", "onExitCodes": exit_codes}
    service_spec = {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": {JOB_LABEL: spec.name},
        "ports": [{"name": "rendezvous", "port": spec.master_port, "protocol": "TCP"}],
    }
    data = {CONFIG_FILE: spec.config_json}
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.instances,
        "parallelism": spec.instances,
        "backoffLimit": 0,
        # A replacement starts only once the old pod is gone: it reuses the hostname.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {"rules": [ignore_disruption, fail_on_error]},
        "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
        "template": {"metadata": {"labels": labels}, "spec": _pod_spec(spec)},
    }
    deadline = spec.active_deadline_seconds
    if deadline is not None:
        job_spec["activeDeadlineSeconds"] = deadline
    return [
        _object(spec, "v1", "Service", spec.service_name, spec=service_spec),
        _object(spec, "v1", "ConfigMap", spec.config_map_name, data=data),
        _object(spec, "batch/v1", "Job", spec.name, spec=job_spec),
    ]


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """The objects as one multi-document YAML stream (``kubectl apply -f -``)."""
    return yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True)
