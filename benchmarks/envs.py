"""Env-suite speed against bare MuJoCo (the numbers of BENCHMARKS.md), with the targets checked.

Usage: python benchmarks/envs.py [--seconds S] [--out results.json]
Targets (issue 2): overhead = raw/env <= 1.5 and pixel_ratio = env/raw >= 0.7 for every embodiment.
Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

from embodied.bench import bench_envs, format_table

TARGETS = {"overhead": ("<=", 1.5), "pixel_ratio": (">=", 0.7)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--out", default=None, help="write rows, machine and date as JSON here")
    args = ap.parse_args()
    rows = bench_envs(seconds=args.seconds)
    print(format_table(rows))
    missed = [
        f"{r['embodiment']}: {k}={r[k]:.2f} (target {op} {v})"
        for r in rows
        for k, (op, v) in TARGETS.items()
        if not (r[k] <= v if op == "<=" else r[k] >= v)
    ]
    if args.out:
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(), "python": platform.python_version()}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    for m in missed:
        print("target missed:", m, file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
