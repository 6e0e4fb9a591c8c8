"""Stopping promptly (issue 10, part 3): Kubernetes stops a pod with SIGTERM, so every long
wait and every stage must end on it within seconds, not minutes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imageml_core.settings import Settings
from imageml_core.storage.object_store import ObjectStore
from imageml_resources import build_resources
from tests.helpers import jpeg_bytes

pytestmark = pytest.mark.e2e

HOLDER = textwrap.dedent(
    """
    import sys, time
    from imageml_core.manifest import NORMALIZE, SqlManifestStore
    from imageml_core.manifest.lease import Lease

    store = SqlManifestStore(sys.argv[1])
    lease = Lease(store, NORMALIZE, sys.argv[2], sys.argv[3], "another-run", ttl_s=60)
    assert lease.acquire()
    print("holding", flush=True)
    time.sleep(600)
    """
)


def _imageml(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "imageml_cli.main", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_a_run_waiting_on_another_runs_lease_stops_on_sigterm(
    s3_env: dict[str, str], object_store: ObjectStore, tmp_path: Path
) -> None:
    """Two variants, so two normalize runs queue: SIGTERM during the first must stop the
    command, not just that run (Dagster turns the signal into a failed step and returns;
    the runner once went on to the second run, which waited on the lease again)."""
    env = {**s3_env, "NORMALIZE_SIZES": "720p,360p", "AUGMENT_PIPELINE": "light"}
    settings = Settings.from_env(env)
    object_store.put_bytes(settings.raw_uri.join("a.jpg"), jpeg_bytes(1, (320, 240)))
    home = str(tmp_path / "home")
    first = _imageml(env, "run", "--until", "augment", "--home", home)
    assert first.wait(timeout=300) == 0, first.stdout.read() if first.stdout else ""

    # Another run holds the batch's compute lease (alive: it keeps heart-beating).
    resources = build_resources(settings)
    policy = resources["normalization"].get_policy()
    hashes = {v.name: policy.variant_hash(v) for v in policy.variants}
    digest = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:12]
    tag = resources["augmentation"].get_spec().tag
    from imageml_resources import open_manifest_store

    (batch,) = {
        r.partition_key
        for r in open_manifest_store(settings.manifest_db_url).manifests()
        if r.step == "ingest"
    }
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, settings.manifest_db_url, batch, f"compute@{tag}@{digest}"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    waiter = _imageml(env, "run", "--until", "normalize", "--home", home)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        assert waiter.stdout is not None
        for line in waiter.stdout:
            if "another run is computing" in line:
                break
        else:
            pytest.fail("the run did not wait on the lease")
        os.kill(waiter.pid, signal.SIGTERM)
        sent = time.monotonic()
        rest = waiter.stdout.read()
        waiter.wait(timeout=30)
        assert time.monotonic() - sent < 10, "SIGTERM took more than 10 s to stop the run"
        assert waiter.returncode == 130, rest
        assert "[normalize] 2/2" not in rest, "a run started after SIGTERM"
        assert "Interrupted: 0 run(s) finished" in rest
        assert "Traceback" not in rest
    finally:
        for proc in (waiter, holder):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_sigterm_while_setting_up_exits_130_with_a_message(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM before the first run starts (while the definitions load) ends the command
    with 130 and one line, not Python's default death by signal or click's "Aborted!"."""
    from click.testing import CliRunner

    import imageml_cli.runner as runner
    from imageml_cli.main import cli

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)

    def signalled(*_args: object, **_kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # as `kubectl delete pod` would, mid-set-up
        time.sleep(5)  # the handler raises here
        raise AssertionError("SIGTERM was not turned into an interrupt")

    monkeypatch.setattr(runner, "build_definitions", signalled)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(cli, ["run"])
    assert result.exit_code == 130, result.output
    assert "Interrupted" in result.output and "Aborted" not in result.output
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
