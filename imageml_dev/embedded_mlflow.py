"""An MLflow tracking server on loopback, for `imageml demo`, `imageml dev` and the tests.

``mlflow server`` with a SQLite backend store (runs, registry) in ``data_dir`` and proxied
artifact storage (``--serve-artifacts``) in the S3 server, so clients need no S3
credentials: only the server holds them. One uvicorn worker and job execution switched off
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``; otherwise MLflow 3 starts job workers that
take ~2.6 GB) keep it at ~550 MB RSS: the ``mlflow server`` parent and its uvicorn child,
~275 MB each. It answers in 10-30 s (MLflow's imports and, on first start, its database
migrations).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from imageml_dev.embedded_s3 import EmbeddedServiceError, _port_is_free, free_port

# Environment that must not leak from the caller's shell into the server: a session token
# would be sent with the embedded keys and fail every signature; a tracking URI is
# meaningless for the server itself.
_DROPPED_ENV = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class EmbeddedMlflow:
    """A ``mlflow server`` process serving tracking, registry and proxied artifacts on
    ``127.0.0.1:<port>``.

    ``data_dir`` holds the SQLite store (``mlflow.db``); ``s3_endpoint_url``,
    ``access_key`` and ``secret_key`` reach the S3 server; ``artifacts_uri``
    (``s3://<bucket>/<prefix>``, the bucket must exist) is where artifacts go; ``port`` 0
    picks a free port at start; ``log_path`` defaults to ``<data_dir>.mlflow.log`` beside
    the directory.
    """

    data_dir: Path
    s3_endpoint_url: str
    access_key: str
    secret_key: str
    artifacts_uri: str
    port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def tracking_uri(self) -> str:
        """``http://127.0.0.1:<port>``: the tracking (and registry) URI for clients."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_store_uri(self) -> str:
        """The SQLite database in ``data_dir`` (runs, experiments, registered models)."""
        return f"sqlite:///{self.data_dir / 'mlflow.db'}"

    def start(self, timeout_s: float = 120.0) -> EmbeddedMlflow:
        """Launch ``mlflow server`` (a free port unless ``port`` is set and free; log in
        ``log_path``) and wait until its ``/health`` endpoint answers.

        Returns self. Raises :class:`EmbeddedServiceError`, naming the log, if the server
        exits or does not answer within ``timeout_s`` seconds (it is stopped first)."""
        if not self.artifacts_uri.startswith("s3://"):
            raise ValueError(
                f"artifacts_uri must be s3://<bucket>/<prefix>, not {self.artifacts_uri!r}"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port or not _port_is_free(self.port):
            self.port = free_port()
        args = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            self.artifacts_uri,
        ]
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env.update(
            {
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint_url,
                "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": env.get("AWS_REGION", "us-east-1"),
                # No internet here; the server should not try to send usage data.
                "MLFLOW_DISABLE_TELEMETRY": "true",
            }
        )
        log_path = self.log_path or self.data_dir.parent / f"{self.data_dir.name}.mlflow.log"
        self.log_path = log_path
        log_fh = log_path.open("ab")
        self.process = subprocess.Popen(
            args,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.data_dir,  # MLflow writes nothing to its cwd, but keep it off the repo
            start_new_session=True,  # its own process group: stop() signals the uvicorn child too
        )
        log_fh.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise EmbeddedServiceError(f"mlflow server exited with code {code}; see {log_path}")
            if self._answers():
                return self
            time.sleep(0.25)
        self.stop()
        raise EmbeddedServiceError(
            f"mlflow server did not answer on {self.tracking_uri}/health within "
            f"{timeout_s:.0f} s; see {log_path}"
        )

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=1) as resp:
                return resp.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the server's process group, SIGKILL after ``grace_s`` seconds; waits for
        it to exit. A no-op if it is not running."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # The parent can exit before its uvicorn child (which got the same SIGTERM): wait
        # for the whole group, so no server outlives stop().
        killed = False
        while _group_alive(proc.pid):
            if time.monotonic() > deadline:
                if killed:
                    break  # only zombies left, for init to reap
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                killed, deadline = True, time.monotonic() + 5
            time.sleep(0.1)

    def __enter__(self) -> EmbeddedMlflow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
