"""Stage 2 as the asset runs it, on N 12-megapixel JPEGs in a real S3 server (SeaweedFS).

Stages the shard from S3 to NVMe, normalizes on a process pool (one per core) with uploads
overlapped, and reports wall time, images/s, and how busy the cores were: the machine as a
whole (/proc/stat), split into the stage (this process and its workers) and the S3 server,
which shares the cores here as a node-local server would not. Baseline in the same run:
the same work done serially in one process (naive OpenCV), to show the ratio.

    uv run python perf/normalize/bench_asset.py [--images 200] [--unique 20]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from baseline import naive_normalize, photo_like

from imageml_core.sizes import parse_sizes
from imageml_core.stages.normalize.batch import ShardImage, compute_batch
from imageml_core.stages.normalize.image import NormalizePolicy
from imageml_core.storage.object_store import ObjectStore
from imageml_core.storage.staging import NvmeStaging
from imageml_core.uris import S3Uri
from imageml_dev.embedded_s3 import EmbeddedS3


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def process_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (float(stat[11]) + float(stat[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument(
        "--unique",
        type=int,
        default=20,
        help="distinct pictures (each copy differs by a JPEG comment)",
    )
    parser.add_argument("--sizes", default="1080p,720p,800x600")
    args = parser.parse_args()
    policy = NormalizePolicy(tuple(parse_sizes(args.sizes)))
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp, EmbeddedS3(Path(tmp) / "s3") as s3:
        store = ObjectStore(
            s3.endpoint_url, access_key_id=s3.access_key, secret_access_key=s3.secret_key
        )
        store.ensure_bucket("bench")
        bases = [
            Image.fromarray(cv2.cvtColor(photo_like(i), cv2.COLOR_BGR2RGB))
            for i in range(args.unique)
        ]

        def put(i: int) -> ShardImage:
            buf = io.BytesIO()
            bases[i % args.unique].save(buf, "JPEG", quality=90, comment=f"copy {i}".encode())
            info = store.put_bytes(S3Uri("bench", f"raw/{i:04d}.jpg"), buf.getvalue())
            return ShardImage(str(info.uri), info.etag, "", "original", ())

        with ThreadPoolExecutor(4) as pool:
            items = list(pool.map(put, range(args.images)))
        print(
            f"{args.images} images 4000x3000 q90 in S3 ({args.unique} distinct pictures); variants {args.sizes}; {cores} cores"
        )

        # Baseline: naive normalization, serial, from the same staged files.
        staging = NvmeStaging(Path(tmp) / "nvme-baseline")
        staged = staging.stage_in(
            store, [store.head(S3Uri("bench", f"raw/{i:04d}.jpg")) for i in range(args.images)], "b"
        )
        sample = staged[: max(cores * 4, 16)]
        start = time.perf_counter()
        for s in sample:
            naive_normalize(s.path, policy)
        naive_rate = len(sample) / (time.perf_counter() - start)

        staging = NvmeStaging(Path(tmp) / "nvme")
        assert s3.process is not None
        s3_cpu0, (busy0, total0) = process_cpu_seconds(s3.process.pid), machine_busy_seconds()
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        result = compute_batch(
            items,
            batch_id="bench",
            store=store,
            staging=staging,
            policy=policy,
            normalized_uri=S3Uri("bench", "silver"),
            log_fn=lambda _m: None,
        )
        wall = time.perf_counter() - wall0
        busy = (cpu_seconds() - cpu0) / (wall * cores)
        s3_busy = (process_cpu_seconds(s3.process.pid) - s3_cpu0) / (wall * cores)
        busy1, total1 = machine_busy_seconds()
        machine = (busy1 - busy0) / (total1 - total0)
        outputs = sum(len(v) for v in result.per_variant.values())
        written, paths = result.written, result.paths
    rate = args.images / wall
    print(f"baseline (naive, serial, staged files only): {naive_rate:6.2f} images/s")
    print(
        f"ours (whole stage: S3 -> NVMe -> pool -> S3):  {rate:6.2f} images/s  ({wall:.1f} s, {outputs} outputs, {written} uploaded)"
    )
    print(f"ratio ours/baseline: {rate / naive_rate:.2f}x")
    print(
        f"cores busy: {machine * 100:.0f}% of {cores} (machine, /proc/stat): the stage "
        f"{busy * 100:.0f}%, the S3 server {s3_busy * 100:.0f}%; decode paths {paths}"
    )


if __name__ == "__main__":
    main()
