"""The Kubernetes objects of a distributed training job: valid for the API server's schema
(``kubernetes-validate --strict``, offline) and wired for torchrun DDP on an Indexed Job."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from imageml_core.stages.train.k8s import (
    MAX_NAME,
    TrainingJobSpec,
    build_training_objects,
    sanitize_name,
    to_yaml,
)

# The newest schemas kubernetes-validate bundles, and 1.31 (Pod failure policy GA) as the
# oldest cluster the Job is meant for.
LATEST = ".".join(kubernetes_validate.latest_version().split(".")[:2])
VERSIONS = ("1.31", LATEST)
SECRET_VALUE = "s3cr3t-password-value"
CONFIG = {"task": "detection", "model": "resnet10t", "epochs": 2, "max_minutes": 10.0}


def _spec(**changes: Any) -> TrainingJobSpec:
    values: dict[str, Any] = {
        "name": "train-2024-06-01",
        "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/imageml-train:abc123",
        "trainer_config": CONFIG,
        "namespace": "imageml",
        "env": {"TRAIN_EPOCHS": "2", "MLFLOW_TRACKING_URI": "http://mlflow.imageml:5000"},
        "max_minutes": 10.0,
    }
    values.update(changes)
    return TrainingJobSpec(**values)


def _validate(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def _parts(spec: TrainingJobSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    objects = build_training_objects(spec)
    assert [o["kind"] for o in objects] == ["Service", "ConfigMap", "Job"]
    _validate(objects)
    service, config_map, job = objects
    return service, config_map, job


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def _env(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _pod(job)["containers"][0]["env"]}


@pytest.mark.parametrize("instances", [1, 2, 4])
def test_ddp_wiring_follows_the_indexed_job_and_headless_service(instances: int) -> None:
    spec = _spec(instances=instances)
    service, config_map, job = _parts(spec)
    name = spec.name
    assert service["spec"]["clusterIP"] == "None"
    # Rank 0 must resolve before it is Ready, else the other ranks cannot rendezvous.
    assert service["spec"]["publishNotReadyAddresses"] is True
    template_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == instances
    assert job["spec"]["backoffLimit"] == 0
    pod = _pod(job)
    assert pod["subdomain"] == service["metadata"]["name"]
    assert pod["restartPolicy"] == "Never"
    args = pod["containers"][0]["args"]
    assert args[:3] == ["python", "-m", "torch.distributed.run"]
    assert f"--nnodes={instances}" in args
    assert "--nproc-per-node=1" in args
    # Pod 0 of an Indexed Job is <job>-0; under the subdomain its name is <job>-0.<svc>.
    assert f"--master-addr={name}-0.{service['metadata']['name']}" in args
    assert "--master-port=29500" in args
    assert "--node-rank=$(JOB_COMPLETION_INDEX)" in args
    index = _env(job)["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert _env(job)["TRAIN_INSTANCES"]["value"] == str(instances)
    worker = args.index("imageml_core.stages.train.worker")
    assert args[worker - 1] == "-m"
    assert args[worker + 1 : worker + 3] == ["--config", "/config/train.json"]
    assert args[worker + 4] == f"/mnt/nvme/output/{name}/rank-$(JOB_COMPLETION_INDEX)"
    # The config reaches /config/train.json from the ConfigMap.
    assert yaml.safe_load(config_map["data"]["train.json"]) == CONFIG
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/config"]["readOnly"] is True
    assert len(f"{name}-{instances - 1}") <= 63  # the last pod's hostname is a label


def test_secrets_come_from_the_secret_and_never_inline() -> None:
    spec = _spec(secret_name="imageml-secrets", env_config_map="imageml-config")
    objects = build_training_objects(spec)
    _validate(objects)
    container = _pod(objects[2])["containers"][0]
    assert {"secretRef": {"name": "imageml-secrets"}} in container["envFrom"]
    assert {"configMapRef": {"name": "imageml-config"}} in container["envFrom"]
    assert _env(objects[2])["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.imageml:5000"
    with pytest.raises(ValueError, match=r"MLFLOW_TRACKING_URI.*Secret"):
        _spec(env={"MLFLOW_TRACKING_URI": f"https://user:{SECRET_VALUE}@mlflow.example.com"})
    with pytest.raises(ValueError, match="Secret"):
        _spec(env={"MANIFEST_DB_URL": f"postgresql://imageml:{SECRET_VALUE}@db:5432/imageml"})
    with pytest.raises(ValueError, match="credential"):
        _spec(env={"AWS_SECRET_ACCESS_KEY": SECRET_VALUE})
    with pytest.raises(ValueError, match="ConfigMap is not secret"):
        _spec(trainer_config={"tracking": f"http://u:{SECRET_VALUE}@mlflow:5000"})
    with pytest.raises(ValueError, match="set by the job builder"):
        _spec(env={"NVME_ROOT": "/elsewhere"})
    assert SECRET_VALUE not in to_yaml(objects)


def test_nvme_placement_and_security() -> None:
    _, _, job = _parts(_spec(nvme_host_path="/mnt/disks/nvme0"))
    pod = _pod(job)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["nvme"]["hostPath"]["path"] == "/mnt/disks/nvme0"
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["nvme"] == "/mnt/nvme"
    assert _env(job)["NVME_ROOT"]["value"] == "/mnt/nvme"
    assert pod["nodeSelector"] == {"imageml.io/nvme": "true"}
    assert {
        "key": "imageml.io/nvme",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The read-only root still leaves writable /tmp (HOME) and an in-memory /dev/shm.
    assert {"/tmp", "/dev/shm"} <= set(mounts.values())
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "node.kubernetes.io/instance-type" not in pod["nodeSelector"]


def test_gpu_and_instance_type() -> None:
    spec = _spec(instances=2, gpus=1, instance_type="g5.xlarge", cpu_request=3.5)
    _, _, job = _parts(spec)
    pod = _pod(job)
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"] == {"cpu": "3500m", "memory": "8192Mi"}
    assert resources["limits"]["memory"] == "8192Mi"
    assert "cpu" not in resources["limits"]  # no CPU cap unless asked
    assert pod["nodeSelector"]["node.kubernetes.io/instance-type"] == "g5.xlarge"
    assert pod["nodeSelector"]["imageml.io/nvme"] == "true"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    with pytest.raises(ValueError, match="gpus per instance"):
        _spec(gpus=2)


def test_failure_policy_deadline_and_ttl() -> None:
    _, _, job = _parts(_spec(max_minutes=90, deadline_margin_minutes=30))
    rules = job["spec"]["podFailurePolicy"]["rules"]
    # Disruption is checked first: a preempted pod's container also exits non-zero.
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rules[1]["action"] == "FailJob"
    assert rules[1]["onExitCodes"] == {
        "containerName": "trainer",
        "operator": "NotIn",
        "values": [0],
    }
    assert job["spec"]["activeDeadlineSeconds"] == 120 * 60
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    _, _, unbounded = _parts(_spec(max_minutes=None))
    assert "activeDeadlineSeconds" not in unbounded["spec"]


def test_names_are_dns_labels() -> None:
    assert sanitize_name("Train Run_2024/06/01") == "train-run-2024-06-01"
    assert sanitize_name("2024-06-01") == "t-2024-06-01"  # a Service name starts with a letter
    long_a, long_b = sanitize_name("x" * 80 + "a"), sanitize_name("x" * 80 + "b")
    assert len(long_a) <= MAX_NAME and long_a != long_b
    spec = _spec(name="Nightly Run #7 (ResNet)")
    service, config_map, job = build_training_objects(spec)
    assert job["metadata"]["name"] == service["metadata"]["name"] == "nightly-run-7-resnet"
    assert config_map["metadata"]["name"] == "nightly-run-7-resnet-config"
    with pytest.raises(ValueError):
        sanitize_name("--//--")
    with pytest.raises(ValueError, match="namespace"):
        _spec(namespace="Not_A_Namespace")


def test_dollar_signs_in_env_survive_kubernetes_expansion() -> None:
    _, _, job = _parts(_spec(env={"TRAIN_NOTE": "cost $(HOME) $5"}))
    assert _env(job)["TRAIN_NOTE"]["value"] == "cost $$(HOME) $$5"


def test_strict_validation_is_not_vacuous() -> None:
    _, _, job = build_training_objects(_spec())
    _pod(job)["containers"][0]["unknownField"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, LATEST, strict=True)


def test_yaml_stream_passes_the_cli(tmp_path: Path) -> None:
    objects = build_training_objects(_spec(instances=3, gpus=1, instance_type="p4d.24xlarge"))
    text = to_yaml(objects)
    assert list(yaml.safe_load_all(text)) == objects
    path = tmp_path / "training.yaml"
    path.write_text(text)
    cli = (
        shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
        or "kubernetes-validate"
    )
    result = subprocess.run(
        [cli, "--strict", "-k", LATEST, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for kind in ("service", "configmap", "job"):
        assert f"passed for resource {kind}/" in result.stdout.lower()
