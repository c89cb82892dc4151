"""Data-layer speed (the numbers of BENCHMARKS.md's data section), with issue 3's targets checked.

Usage: python benchmarks/data.py [--data out/bench/data.zarr] [--frames 20000] [--workers 2] [--device cuda] [--out results.json]
Targets: lossless pixel compression >= 8x; sampler >= 20x naive per-window Zarr reads and
>= 0.5x in-RAM NumPy indexing; out of core still >= 10x naive. Exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from embodied.bench_data import bench_data, format_result, missed_targets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="out/bench/data.zarr", help="store to measure on (collected there on first use)")
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    ap.add_argument("--collect-workers", type=int, default=2, help="processes collecting the store on first use")
    ap.add_argument("--device", default=None, help="also copy each batch to this torch device (e.g. cuda) inside the timed loop")
    ap.add_argument("--out", default=None, help="write results, machine and date as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    r = bench_data(
        args.data, frames=args.frames, seconds=args.seconds, repeats=args.repeats, loader_workers=args.workers,
        collect_workers=args.collect_workers, device=args.device, progress=lambda s: print(s, file=sys.stderr),
    )
    print(format_result(r))
    missed = missed_targets(r)
    if args.out:
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "result": r, "missed_targets": missed}, f, indent=2)
    for m in missed:
        print("target missed:", m, file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
