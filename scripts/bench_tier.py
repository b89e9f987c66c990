#!/usr/bin/env python3
"""Benchmark (issue 18): mounts sharing one S3 bucket against mounts on their own.

A one-node Ceph radosgw (tests/rgw.py) is the bucket; `osufs serve` on loopback, behind
--latency, is upstream. --mounts mounts, one after another (a household, a LAN: one fetched
first), each with an empty cache, read every file of --sets sample sets. Run twice: with
`--shared` and without. Printed side by side: upstream requests and bytes per configuration,
and the ratio; each mount's time; the ranged-read latency of a 64 KiB range from the bucket
and from upstream.

    .venv/bin/python scripts/bench_tier.py [--sets 200] [--mounts 4] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
from botocore.credentials import Credentials

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from osufs.samples import build_sample_library  # noqa: E402
from osufs.tier.s3 import Location, S3Client  # noqa: E402
from tests.helpers import Server, mounted  # noqa: E402
from tests.rgw import radosgw  # noqa: E402

RANGE = 64 << 10


def read_everything(root: Path, ids: list[int]) -> int:
    total = 0
    for set_id in ids:
        for top, _dirs, names in os.walk(root / str(set_id)):
            for name in names:
                total += len(Path(top, name).read_bytes())
    return total


def run_mounts(
    work: Path, server: Server, ids: list[int], mounts: int, shared: list[str], env: dict
) -> list[dict]:
    """Each mount in turn: its time, and what upstream served it."""
    results = []
    for number in range(mounts):
        before = server.stats()
        base = work / f"m{number}"
        started = time.monotonic()
        with mounted(
            base / "mnt", base / "cache", base / "mount.log",
            "--source", f"hexide={server.url}", "--read-ahead", "0", *shared, env=env,
        ) as mount:
            read = read_everything(mount.mountpoint, ids)
        seconds = time.monotonic() - started  # the unmount waits for the uploads
        after = server.stats()
        results.append(
            {
                "seconds": round(seconds, 2),
                "bytes_read": read,
                "upstream_requests": after["requests"] - before["requests"],
                "upstream_bytes": after["bytes_sent"] - before["bytes_sent"],
            }
        )
        print(f"  mount {number + 1}: {results[-1]}", flush=True)
    return results


async def range_latencies(
    s3: S3Client, server: Server, archive: Path, key: str, size: int, samples: int
) -> dict[str, float]:
    """Median milliseconds of one 64 KiB ranged GET from the bucket (of the largest blob)
    and from upstream (of an archive), at places spread over both."""
    bucket, upstream = [], []
    span = min(size, archive.stat().st_size) - RANGE
    async with httpx.AsyncClient() as client:
        url = f"{server.url}/beatmaps/{archive.stem}/download"
        for n in range(samples):
            start = (n * 7919) % span
            began = time.perf_counter()
            await s3.get(key, start, RANGE)
            bucket.append(time.perf_counter() - began)
            began = time.perf_counter()
            answer = await client.get(url, headers={"Range": f"bytes={start}-{start + RANGE - 1}"})
            assert answer.status_code == 206
            upstream.append(time.perf_counter() - began)
    return {
        "bucket_ms": round(statistics.median(bucket) * 1000, 2),
        "upstream_ms": round(statistics.median(upstream) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=200)
    parser.add_argument("--mounts", type=int, default=4)
    parser.add_argument("--audio-size", type=int, default=200_000)
    parser.add_argument("--latency", type=float, default=0.05, help="upstream's, seconds")
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-tier-", dir=args.workdir))
    os.environ["XDG_STATE_HOME"] = str(work / "state")  # the mounts' logs stay in here
    try:
        archives = work / "archives"
        build_sample_library(archives, count=args.sets, audio_size=args.audio_size)
        ids = sorted(int(path.stem) for path in archives.glob("*.osz"))
        began = time.monotonic()
        with radosgw() as rgw:
            print(f"radosgw up in {time.monotonic() - began:.1f} s", flush=True)
            env = {"AWS_ACCESS_KEY_ID": rgw.access_key, "AWS_SECRET_ACCESS_KEY": rgw.secret_key}
            bucket = "bench-" + secrets.token_hex(4)
            s3 = S3Client(
                Location.parse(f"s3://{bucket}/group"),
                Credentials(rgw.access_key, rgw.secret_key),
                endpoint=rgw.endpoint,
            )
            trio.run(s3.create_bucket)
            server = Server(archives, work / "server.log", "--latency", str(args.latency))
            try:
                print("without the shared tier:", flush=True)
                alone = run_mounts(work / "alone", server, ids, args.mounts, [], env)
                print("with --shared:", flush=True)
                shared_args = ["--shared", f"s3://{bucket}/group", "--s3-endpoint", rgw.endpoint]
                shared = run_mounts(work / "shared", server, ids, args.mounts, shared_args, env)

                async def latencies() -> dict[str, float]:
                    listed = await s3.list("blobs/")
                    big = max(listed, key=lambda item: item.size)
                    archive = archives / f"{ids[0]}.osz"
                    result = await range_latencies(
                        s3, server, archive, big.key, big.size, args.samples
                    )
                    await s3.aclose()
                    return result

                ranged = trio.run(latencies)
            finally:
                server.stop()
        report = {
            "machine": f"{platform.node()} {os.cpu_count()} cores (shared with other work)",
            "sets": args.sets,
            "mounts": args.mounts,
            "upstream_latency_s": args.latency,
            "alone": alone,
            "shared": shared,
            "ranged_64k": ranged,
        }
        for key in ("upstream_requests", "upstream_bytes"):
            a, s = sum(r[key] for r in alone), sum(r[key] for r in shared)
            report[f"{key}_ratio"] = round(a / s, 2) if s else None
            print(f"{key}: alone {a}, shared {s}, ratio {report[f'{key}_ratio']}")
        later = [r["seconds"] for r in shared[1:]] or [0.0]
        print(
            f"mount time: first {alone[0]['seconds']} s alone, {shared[0]['seconds']} s shared; "
            f"later mounts {statistics.median([r['seconds'] for r in alone[1:]] or [0.0])} s "
            f"alone, {statistics.median(later)} s shared"
        )
        print(f"64 KiB range: bucket {ranged['bucket_ms']} ms, upstream {ranged['upstream_ms']} ms")
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
