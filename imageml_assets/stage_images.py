"""Per-stage container images for Kubernetes, attached where every launch path sees them.

Runs launched from the UI do not carry a job's tags, so the image goes on the asset's
``op_tags``: the k8s executor reads ``dagster-k8s/config`` from each step.
"""

import os
from typing import Any

STAGES = ("ingest", "augment", "normalize", "train", "infer")

# Requests sized for the 2-core nodes the stages were measured on; override per cluster.
_DEFAULT_RESOURCES = {
    "ingest": {"cpu": "1", "memory": "2Gi"},
    "augment": {"cpu": "2", "memory": "4Gi"},
    "normalize": {"cpu": "2", "memory": "4Gi"},
    "train": {"cpu": "2", "memory": "8Gi"},
    "infer": {"cpu": "2", "memory": "4Gi"},
}


def stage_image(stage: str) -> str:
    """``IMAGEML_IMAGE_<STAGE>`` or ``<IMAGEML_IMAGE_REGISTRY>/imageml-<stage>:<IMAGEML_IMAGE_TAG>``."""
    explicit = os.environ.get(f"IMAGEML_IMAGE_{stage.upper()}")
    if explicit:
        return explicit
    registry = os.environ.get("IMAGEML_IMAGE_REGISTRY", "").rstrip("/")
    tag = os.environ.get("IMAGEML_IMAGE_TAG", "latest")
    name = f"imageml-{stage}:{tag}"
    return f"{registry}/{name}" if registry else name


def stage_op_tags(stage: str) -> dict[str, Any]:
    """``op_tags`` that run a stage's steps in its own image (:func:`stage_image`) under the k8s
    executor: CPU/memory requests (memory limit = request), the NVMe host path
    (``IMAGEML_NVME_HOST_PATH``, default ``/mnt/nvme``) mounted at ``/mnt/nvme`` as
    ``NVME_ROOT``, and a node selector ``imageml.io/nvme=true`` (plus
    ``node.kubernetes.io/instance-type`` from ``TRAIN_INSTANCE_TYPE`` for train). Raises
    ValueError for a stage not in :data:`STAGES`."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    requests = _DEFAULT_RESOURCES[stage]
    nvme_volume = os.environ.get("IMAGEML_NVME_HOST_PATH", "/mnt/nvme")
    node_selector = {"imageml.io/nvme": "true"}
    if stage == "train" and (kind := os.environ.get("TRAIN_INSTANCE_TYPE", "").strip()):
        # The well-known label every cloud's nodes carry (Kubernetes docs, "Well-Known
        # Labels, Annotations and Taints").
        node_selector["node.kubernetes.io/instance-type"] = kind
    return {
        "imageml/stage": stage,
        "dagster-k8s/config": {
            "container_config": {
                "image": stage_image(stage),
                "resources": {"requests": dict(requests), "limits": {"memory": requests["memory"]}},
                "volume_mounts": [{"name": "nvme", "mount_path": "/mnt/nvme"}],
                "env": [{"name": "NVME_ROOT", "value": "/mnt/nvme"}],
            },
            "pod_spec_config": {
                "volumes": [
                    {
                        "name": "nvme",
                        "host_path": {"path": nvme_volume, "type": "DirectoryOrCreate"},
                    }
                ],
                "node_selector": node_selector,
            },
        },
    }
