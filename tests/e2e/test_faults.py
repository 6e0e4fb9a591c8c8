"""kill -9 in each stage, then rerun (issue 10 acceptance): the outputs are byte-identical
to an undisturbed run's, the manifest store holds no duplicate, and the rerun does not
stall beyond the stated lease time (60 s after the dead holder's last heartbeat)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from imageml_core.manifest import AUGMENT, INGEST, NORMALIZE, SqlManifestStore
from imageml_core.manifest.lease import DEFAULT_TTL_S
from imageml_core.storage.object_store import ObjectStore
from imageml_core.uris import S3Uri
from tests.helpers import jpeg_bytes, zip_bytes

pytestmark = pytest.mark.e2e

# A kill point per stage: a line each stage prints while it works.
KILL_POINTS = {
    "ingest": "staging 7 objects",
    "augment": "staging 8 images and",
    "normalize": "normalizing 16 images into 2 variants",
}


def _env(s3_env: dict[str, str], bucket: str, tmp: Path) -> dict[str, str]:
    env = {k: v.replace(s3_env["RAW_URI"].split("/")[2], bucket) for k, v in s3_env.items()}
    return {
        **env,
        "NVME_ROOT": str(tmp / "nvme"),
        "MANIFEST_DB_URL": f"sqlite:///{tmp / 'manifest.db'}",
        "IMAGEML_HOME": str(tmp / "home"),
        "NORMALIZE_SIZES": "720p,64x64",
        "AUGMENT_PIPELINE": "light",
        "NORMALIZE_WORKERS": "2",
    }


def _upload(store: ObjectStore, bucket: str) -> None:
    for i in range(6):
        store.put_bytes(S3Uri(bucket, f"raw/cam/{i}.jpg"), jpeg_bytes(i, (400, 300)))
    archive = zip_bytes({"inner/z0.jpg": jpeg_bytes(50), "inner/z1.jpg": jpeg_bytes(51)})
    store.put_bytes(S3Uri(bucket, "raw/cam/pack.zip"), archive)


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    """``imageml run --until normalize`` in its own process group, output on a pipe."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "imageml_cli.main", "run", "--until", "normalize"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    return proc


def _run(env: dict[str, str], kill_at: str | None = None) -> tuple[int, float, str]:
    started = time.monotonic()
    proc = _start(env)
    assert proc.stdout is not None
    output = []
    for line in proc.stdout:
        output.append(line)
        if kill_at is not None and kill_at in line:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes
            break
    proc.wait(timeout=600)
    return proc.returncode, time.monotonic() - started, "".join(output)


def _neutral(text: str, bucket: str) -> str:
    """Bucket names and batch ids (a hash over URIs, so over the bucket) taken out."""
    return re.sub(r"batch-[0-9a-f]{16}", "<batch>", text.replace(bucket, "<bucket>"))


def _outputs(store: ObjectStore, bucket: str) -> dict[str, str]:
    """Every object the pipeline wrote: images by ETag (their bytes), JSON documents by
    their text with bucket names and batch ids taken out (they name both)."""
    out = {}
    for prefix in ("bronze", "augmented", "silver"):
        for info in store.list_objects(S3Uri(bucket, prefix)):
            key = _neutral(info.uri.key, bucket)
            if info.uri.key.endswith(".json"):
                text = store.get_bytes(info.uri).decode()
                out[key] = hashlib.sha256(_neutral(text, bucket).encode()).hexdigest()
            else:
                out[key] = info.etag
    return out


def _ledger(db: Path, bucket: str) -> list[tuple[str, str, str, str]]:
    store = SqlManifestStore(f"sqlite:///{db}")
    rows = [
        (step.name, _neutral(r.uri, bucket), r.etag, r.status)
        for step in (INGEST, AUGMENT, NORMALIZE)
        for r in store.processed_objects(step)
    ]
    store.close()
    return sorted(rows)


@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_kill_9_in_a_stage_then_rerun_gives_the_undisturbed_result(
    stage: str, s3_env: dict[str, str], object_store: ObjectStore, tmp_path: Path
) -> None:
    reference_bucket = f"t-ref-{uuid.uuid4().hex[:12]}"
    object_store.ensure_bucket(reference_bucket)
    faulty_bucket = s3_env["RAW_URI"].split("/")[2]
    reference = _env(s3_env, reference_bucket, tmp_path / "reference")
    faulty = _env(s3_env, faulty_bucket, tmp_path / "faulty")
    _upload(object_store, reference_bucket)
    _upload(object_store, faulty_bucket)
    code, _, out = _run(reference)
    assert code == 0, out

    code, _, out = _run(faulty, kill_at=KILL_POINTS[stage])
    assert code == -signal.SIGKILL, f"the run was not killed in {stage}:\n{out}"
    code, seconds, out = _run(faulty)
    assert code == 0, out
    assert seconds < DEFAULT_TTL_S + 90, f"the rerun took {seconds:.0f} s"

    assert _outputs(object_store, faulty_bucket) == _outputs(object_store, reference_bucket)
    ledger = _ledger(tmp_path / "faulty" / "manifest.db", faulty_bucket)
    assert len(ledger) == len(set(ledger))
    assert ledger == _ledger(tmp_path / "reference" / "manifest.db", reference_bucket)


def test_s3_restarted_mid_upload_fails_the_partition_and_the_rerun_completes_it(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """A dedicated S3 server, restarted while stage 2 uploads: that partition fails (no
    record), the rerun finishes it from its checkpoint, byte-identical to an undisturbed
    run."""
    from imageml_dev.embedded_s3 import EmbeddedS3

    server = EmbeddedS3(tmp_path / "s3").start()
    try:
        store = ObjectStore(
            server.endpoint_url,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
        )
        own = {**s3_env, "S3_ENDPOINT_URL": server.endpoint_url}
        buckets = {"reference": "t-restart-ref", "faulty": "t-restart-faulty"}
        envs = {}
        for name, bucket in buckets.items():
            store.ensure_bucket(bucket)
            _upload(store, bucket)
            envs[name] = _env(own, bucket, tmp_path / name)
        code, _, out = _run(envs["reference"])
        assert code == 0, out

        proc = _start(envs["faulty"])
        assert proc.stdout is not None
        output = []
        for line in proc.stdout:
            output.append(line)
            if KILL_POINTS["normalize"] in line:
                server.stop()  # mid-stage: staging and uploads lose the server
                time.sleep(1)
                server.start()
                break
        output.append(proc.stdout.read())
        assert proc.wait(timeout=600) != 0, "".join(output)
        code, _, out = _run(envs["faulty"])
        assert code == 0, out
        assert _outputs(store, buckets["faulty"]) == _outputs(store, buckets["reference"])
        ledger = _ledger(tmp_path / "faulty" / "manifest.db", buckets["faulty"])
        assert ledger == _ledger(tmp_path / "reference" / "manifest.db", buckets["reference"])
    finally:
        server.stop()
