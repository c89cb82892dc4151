"""The K-shot adaptation curve (issue 6, part 3), with the target checked.

Usage: python benchmarks/adapt_curve.py --ckpt runs/R [--env embodied/PointReachTurned-v0] [--ks 1 5 10 25] [--out DIR]
(the options of `embodied bench adapt`). Target: at K = 10 the best adapted model's success is
at least 2x that of the same architecture trained from scratch on the same demos, and above
the unadapted model's. Writes DIR/adapt_curve.json (`embodied report DIR` plots it); exits 1
when the target is missed.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embodied.bench_adapt import adapt_curve, format_curve  # noqa: E402
from embodied.config import BenchAdaptConfig, add_arguments, from_args  # noqa: E402
from embodied.errors import EmbodiedError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap, BenchAdaptConfig)
    cfg = from_args(BenchAdaptConfig, ap.parse_args())
    try:
        curve = adapt_curve(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    except EmbodiedError as e:
        print(f"adapt_curve: error: {e}", file=sys.stderr)
        return e.exit_code
    print(format_curve(curve))
    return 1 if curve["missed_targets"] else 0


if __name__ == "__main__":
    sys.exit(main())
