"""Where a training step's GPU time goes: `embodied bench train`'s step under torch.profiler.

    python benchmarks/profile_train.py --preset base --pixels 64 --data D.zarr [--set d_model=1024 --set n_layer=8]

Prints the benchmark's JSON line, then the CUDA kernels that took the most time over the
profiled steps (warm-up and compilation included: a kernel's share is what matters), grouped
into attention / matmul / convolution / elementwise-and-other so the split reads at a glance.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile

from embodied.bench_train import bench_train


def _kind(name: str) -> str:
    n = name.lower()
    if "flash" in n or "fmha" in n or "attention" in n or "sdpa" in n:
        return "attention"
    if "conv" in n or "cudnn" in n or "implicit_gemm" in n or "wgrad" in n or "dgrad" in n:
        return "convolution"
    if "gemm" in n or "matmul" in n or "cutlass" in n or "sm90_xmma" in n or "nvjet" in n:
        return "matmul"
    return "elementwise/other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--pixels", type=int, default=64)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--data", default=None)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=INT", help="override a model config field")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    overrides = {k: int(v) for k, v in (s.split("=", 1) for s in a.set)}
    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        r = bench_train(a.preset, pixels=a.pixels, window=a.window, batch=a.batch, steps=a.steps, warmup=4, data=a.data, **overrides)
    print(json.dumps(r))
    def t(e: object) -> float:  # time of the kernel (op on CPU) itself
        return e.self_device_time_total if cuda else e.self_cpu_time_total  # type: ignore[attr-defined]

    events = [e for e in prof.key_averages() if t(e) > 0]
    total = sum(t(e) for e in events)
    kinds: dict[str, float] = {}
    for e in events:
        kinds[_kind(e.key)] = kinds.get(_kind(e.key), 0.0) + t(e)
    print(f"share of {'CUDA' if cuda else 'CPU'} time by kind: " + ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    for e in sorted(events, key=lambda e: -t(e))[: a.top]:
        print(f"{t(e) / total:6.1%}  {e.count:6d} calls  {_kind(e.key):17s}  {e.key[:110]}")


if __name__ == "__main__":
    main()
