"""The production instance (dagster.yaml) and the Kubernetes Jobs a launch would create."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from imageml_assets.definitions import build_definitions
from imageml_assets.stage_images import stage_op_tags

ROOT = Path(__file__).resolve().parents[2]
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:6443"}}]
contexts: [{name: local, context: {cluster: local, user: u}}]
current-context: local
users: [{name: u, user: {token: t}}]
"""


def test_production_instance_loads_with_postgres_storage_and_k8s_launcher(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sa.engine.make_url(pg_url)
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    text = (ROOT / "dagster.yaml").read_text()
    # Outside a cluster: the same file with the launcher pointed at a kubeconfig.
    assert "load_incluster_config: true" in text
    text = text.replace(
        "load_incluster_config: true",
        f"load_incluster_config: false\n    kubeconfig_file: {tmp_path / 'kubeconfig'}",
    )
    (tmp_path / "dagster.yaml").write_text(text)
    for var, value in {
        "DAGSTER_HOME": str(tmp_path),
        "DAGSTER_PG_HOST": url.host or "",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USER": url.username or "",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_DB": url.database or "",
        "DAGSTER_K8S_NAMESPACE": "imageml",
    }.items():
        monkeypatch.setenv(var, value)
    instance = dg.DagsterInstance.get()
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_launcher).__name__ == "K8sRunLauncher"
        assert instance.run_launcher.job_namespace == "imageml"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        # Dead run workers are marked failed, not left STARTED (issue 10).
        assert instance.run_monitoring_enabled
        # Storage really is PostgreSQL: a run written through the instance is in its tables.
        run = instance.create_run_for_job(_probe_job())
        assert instance.get_run_by_id(run.run_id) is not None
    finally:
        instance.dispose()
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM runs")).scalar_one() == 1
    engine.dispose()


def _probe_job() -> dg.JobDefinition:
    @dg.op
    def noop() -> None:
        return None

    @dg.job
    def probe() -> None:
        noop()

    return probe


def test_ingest_step_job_uses_the_ingest_image_and_validates_strictly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )
    from kubernetes.client import ApiClient

    # The asset carries the stage's k8s config on its op tags (every launch path sees those).
    raw_images = build_definitions().resolve_assets_def("raw_images")
    assert (
        json.loads(raw_images.op.tags["dagster-k8s/config"])
        == stage_op_tags("ingest")["dagster-k8s/config"]
    )
    # The image is read from the environment when the code location loads.
    monkeypatch.setenv("IMAGEML_IMAGE_REGISTRY", "123456789012.dkr.ecr.us-east-1.amazonaws.com")
    monkeypatch.setenv("IMAGEML_IMAGE_TAG", "v1")
    tags = {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in stage_op_tags("ingest").items()
    }
    user_config = get_user_defined_k8s_config(tags)
    job_config = DagsterK8sJobConfig(
        job_image="imageml-orchestrator:v1",
        dagster_home="/opt/dagster/dagster_home",
        image_pull_policy="IfNotPresent",
        instance_config_map="imageml-dagster-instance",
        service_account_name="imageml-dagster",
        env_config_maps=["imageml-config"],
        env_secrets=["imageml-secrets"],
    )
    job = construct_dagster_k8s_job(
        job_config,
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-0123456789abcdef",
        user_defined_k8s_config=user_config,
        pod_name="dagster-step-0123456789abcdef",
        component="step_worker",
    )
    manifest = ApiClient().sanitize_for_serialization(job)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "123456789012.dkr.ecr.us-east-1.amazonaws.com/imageml-ingest:v1"
    assert {"name": "nvme", "mountPath": "/mnt/nvme"} in container["volumeMounts"]
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    path = tmp_path / "ingest-step-job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    validate = (
        shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
        or "kubernetes-validate"
    )
    result = subprocess.run(
        [validate, "--strict", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed for resource job/" in result.stdout


def test_train_steps_run_on_the_training_instance_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAIN_INSTANCE_TYPE", raising=False)
    pod = stage_op_tags("train")["dagster-k8s/config"]["pod_spec_config"]
    assert pod["node_selector"] == {"imageml.io/nvme": "true"}
    monkeypatch.setenv("TRAIN_INSTANCE_TYPE", "g5.xlarge")
    pod = stage_op_tags("train")["dagster-k8s/config"]["pod_spec_config"]
    assert pod["node_selector"]["node.kubernetes.io/instance-type"] == "g5.xlarge"
    # Other stages keep their own nodes.
    ingest = stage_op_tags("ingest")["dagster-k8s/config"]["pod_spec_config"]
    assert "node.kubernetes.io/instance-type" not in ingest["node_selector"]
