"""The perf/ benchmarks still run, at a toy size: numbers are the note's business, not the
suite's (no timing assertions here), but a benchmark that no longer starts is a defect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

PERF = Path(__file__).resolve().parents[2] / "perf"


def _bench(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(PERF / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_normalize_inner_loop_benchmark_prints_baseline_ours_ratio_and_psnr() -> None:
    out = _bench("normalize/bench_inner_loop.py", "--images", "2", "--rounds", "1")
    for line in (
        "baseline (naive OpenCV):",
        "ours (inner loop):",
        "ratio ours/baseline:",
        "of which decode alone",
        "ours with 4:4:4 output:",
        "the reference encoded at q90 4:2:0",
        "ours, q90 4:4:4 (NORMALIZE_CHROMA=444)",
    ):
        assert line in out, out


def test_normalize_asset_benchmark_runs_against_a_real_s3_server() -> None:
    out = _bench("normalize/bench_asset.py", "--images", "6", "--unique", "2")
    assert "ratio ours/baseline:" in out, out
    assert "cores busy:" in out and "the S3 server" in out, out
    assert "decode paths {'fast': 6}" in out, out


def test_decode_benchmark_prints_both_stages_and_ratios() -> None:
    out = _bench("ingest/bench_decode.py", "--images", "1", "--rounds", "1")
    assert "ingest verify: baseline" in out and "augment decode: baseline" in out, out
    assert out.count("ratio ours/baseline:") == 2, out


def test_shard_benchmark_prints_baseline_ours_and_ratio() -> None:
    out = _bench("train/bench_shards.py", "--images", "20", "--rounds", "1")
    assert "baseline (concatenate the bytes):" in out
    assert "ours (write_shard, WebDataset tar):" in out
    assert "ratio ours/baseline time:" in out


def test_throughput_benchmark_prints_table_ratio_and_writes_csv_and_png(tmp_path: Path) -> None:
    out = _bench(
        "train/bench_throughput.py",
        *("--sizes", "16,32", "--seconds", "0.2", "--rounds", "1", "--warmup", "1"),
        *("--batch-size", "8", "--image-size", "64", "--workers", "0,1"),
        *("--out-dir", str(tmp_path)),
    )
    header = "size | workers | baseline img/s | ours img/s | ratio ours/baseline | overhead %"
    assert header in out, out
    table = out[out.index(header) :].splitlines()[1:5]  # two sizes x two worker counts
    assert [line.split("|")[:2] for line in table] == [
        [f"{size:6d} ", f" {workers:7d} "] for size in (16, 32) for workers in (0, 1)
    ], out
    assert "flatness, ours img/s at 32 / at 16" in out, out
    assert "both targets met with workers:" in out, out
    csv_lines = (tmp_path / "throughput.csv").read_text().splitlines()
    assert csv_lines[0].startswith("size,workers,baseline,ours,ratio,overhead_pct"), csv_lines
    assert len(csv_lines) == 5, csv_lines
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_benchmark_runs_a_toy_budget_and_compares_with_the_target(
    tmp_path: Path,
) -> None:
    out = _bench(
        "train/bench_quality.py",
        *("--minutes", "0.05", "--train", "16", "--val", "8", "--size", "64"),
        *("--epochs", "1", "--batch-size", "8", "--workdir", str(tmp_path)),
    )
    assert "state succeeded" in out.lower(), out
    assert "images/s:" in out, out
    assert out.count("ours/target") == 2, out
    assert "target met" in out or "target NOT met" in out, out
