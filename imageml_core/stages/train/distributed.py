"""Several training processes on this machine: torchrun (``torch.distributed.run``) runs
:mod:`.worker` once per instance, DistributedDataParallel over gloo (CPU) or NCCL (CUDA).

The caller's view is the same as :meth:`~.trainer.TimmTrainer.train`: events while it runs
(tailed from rank 0's ``events.jsonl``), a :class:`~.contract.TrainingResult` at the end,
the artifact in ``out_dir``. With one instance, call the trainer in-process instead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from imageml_core.stages.train.contract import (
    EventSink,
    JobState,
    TrainerConfig,
    TrainingData,
    TrainingEvent,
    TrainingResult,
)
from imageml_core.stages.train.trainer import HEADLINE
from imageml_core.stages.train.worker import (
    ERROR_MARKER,
    EVENTS_FILE,
    RESULT_FILE,
    config_to_json,
    event_from_json,
    result_from_json,
)

POLL_SECONDS = 0.5
#: How long torchrun gets to stop its workers after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 60.0
_ERROR_LINE = re.compile(r"Error|error:|Exception|FAILED")


class _Tail:
    """Complete new lines of a file that another process appends to."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        self.offset += len(chunk)
        *complete, self.partial = (self.partial + chunk).split(b"\n")
        return [line.decode() for line in complete if line.strip()]


def last_error_line(log: str) -> str:
    """The worker's ``imageml-train-error:`` line when there is one, else the last line that
    looks like an error, else the last line; trimmed to one line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    marked = [line.split(ERROR_MARKER, 1)[1].strip() for line in lines if ERROR_MARKER in line]
    if marked:
        return marked[-1]
    errors = [line for line in lines if _ERROR_LINE.search(line)]
    return (errors or lines or ["torchrun exited without output"])[-1]


def torchrun_command(
    instances: int, config_path: Path, work_dir: Path, model_dir: Path
) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node=N -m <worker> ...``
    with this interpreter (so the same environment runs the workers)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={instances}",
        "-m",
        "imageml_core.stages.train.worker",
        "--config",
        str(config_path),
        "--out",
        str(work_dir),
        "--model-dir",
        str(model_dir),
    ]


def run_distributed(
    config: TrainerConfig,
    data: TrainingData,
    out_dir: Path,
    instances: int,
    on_event: EventSink,
    cancel: threading.Event | None = None,
) -> TrainingResult:
    """Train with ``instances`` processes under torchrun on this machine; the artifact goes
    to ``out_dir``. Events from rank 0 reach ``on_event`` while it runs (polled every
    :data:`POLL_SECONDS`). ``cancel`` set: torchrun gets SIGTERM (forwarded to the workers,
    which stop at their next step), is killed after :data:`STOP_GRACE_SECONDS`, and the
    result is CANCELLED. A non-zero exit without a result gives FAILED with the last error
    line of torchrun's output. Never raises for a training failure."""
    cancel = cancel or threading.Event()
    started = time.monotonic()
    ended: list[JobState] = []  # terminal states rank 0 reported

    def forward(line: str) -> None:
        event = event_from_json(json.loads(line))
        if event.kind == "state" and event.state is not None and event.state.terminal:
            ended.append(event.state)
        on_event(event)

    with tempfile.TemporaryDirectory(prefix="imageml-torchrun-") as tmp:
        work = Path(tmp)
        config_path = work / "config.json"
        config_path.write_text(json.dumps(config_to_json(config, data), indent=1))
        log_path = work / "torchrun.log"
        tail = _Tail(work / EVENTS_FILE)
        with log_path.open("wb") as log:
            # A session of its own: on cancel the whole tree (torchrun + workers) can be
            # signalled and, if it hangs, killed, without touching the caller's group.
            proc = subprocess.Popen(
                torchrun_command(instances, config_path, work, Path(out_dir)),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            cancelled = _wait(proc, tail, forward, cancel)
        for line in tail.lines():
            forward(line)
        result_path = work / RESULT_FILE
        if result_path.exists():  # rank 0 finished, whatever the state (even after cancel)
            result = result_from_json(json.loads(result_path.read_text()))
        elif cancelled:
            result = TrainingResult(JobState.CANCELLED, None, {}, HEADLINE[config.task])
        else:
            error = last_error_line(log_path.read_text(errors="replace"))
            result = TrainingResult(
                JobState.FAILED,
                None,
                {},
                HEADLINE[config.task],
                error=f"torchrun exited with status {proc.returncode}: {error}",
            )
    if not ended or ended[-1] != result.state:  # rank 0 died or was stopped before reporting
        on_event(TrainingEvent("state", state=result.state, message=result.error or ""))
    result.seconds = time.monotonic() - started
    return result


def _wait(
    proc: subprocess.Popen[bytes],
    tail: _Tail,
    forward: Callable[[str], None],
    cancel: threading.Event,
) -> bool:
    """Forward event lines until ``proc`` ends; returns whether it was cancelled."""
    while proc.poll() is None:
        for line in tail.lines():
            forward(line)
        if cancel.wait(POLL_SECONDS):
            _stop(proc)
            return True
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to torchrun (it forwards it to the workers), SIGKILL to the group after the
    grace period."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
