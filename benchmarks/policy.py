"""Policy latency with and without the key/value cache (the numbers of BENCHMARKS.md), with the targets checked.

Usage: python benchmarks/policy.py [--preset small] [--contexts 32 64] [--repeats 3] [--out results.json]
Targets (issue 5): at every context >= 32 the cached policy's p50 is <= 5 ms and the cache is >= 3x
faster than a full forward pass over the context, by wall time and by the thread's CPU time (the
latter is the conservative one on a loaded machine: a long uncached step is preempted more often).
Each repeat is one `embodied bench policy` run (cached and uncached interleaved step by step); the
medians over repeats are reported. A last line compares, at the model level and interleaved, the
ring-buffer cache the policy uses (embodied.ringcache.RingCache.step) with the list-of-tensors
cache of TrajectoryModel.step that it replaced. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

from embodied.bench_policy import TARGETS, bench_policy

KEYS = ("cached_p50_ms", "full_p50_ms", "cached_cpu_p50_ms", "full_cpu_p50_ms", "cache_speedup", "cache_speedup_cpu")


def cache_forms(preset_name: str, context: int, steps: int) -> dict[str, float]:
    """p50 wall and CPU ms of one closed-loop step: TrajectoryModel.step (list cache) vs RingCache.step, interleaved."""
    import torch

    from embodied.config import preset
    from embodied.model import TrajectoryModel
    from embodied.ringcache import RingCache

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = TrajectoryModel(preset(preset_name, context=context)).eval()
    goal = torch.randn(1, model.cfg.goal_dim)
    wall: dict[str, list[float]] = {"list": [], "ring": []}
    cpu: dict[str, list[float]] = {"list": [], "ring": []}
    with torch.inference_mode():
        cache, ring, prev = model.start(goal), RingCache(model, goal), None
        for t in range(context + steps):
            s = torch.randn(1, model.cfg.state_dim)
            for name in (("list", "ring") if t % 2 == 0 else ("ring", "list")):
                w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
                if name == "list":
                    logits, cache = model.step(cache, s, torch.tensor([t]), None, prev)
                else:
                    ring.step(s, t, prev)
                if t >= context:
                    wall[name].append((time.perf_counter_ns() - w0) / 1e6)
                    cpu[name].append((time.thread_time_ns() - c0) / 1e6)
            prev = model.decode_action(logits)
    return {f"{k}_{n}_p50_ms": statistics.median(v[n]) for k, v in (("wall", wall), ("cpu", cpu)) for n in v}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--contexts", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=None, help="write rows, machine and date as JSON here")
    args = ap.parse_args()
    rows = []
    for context in args.contexts:
        runs = [bench_policy(args.preset, context=context, steps=args.steps, device="cpu") for _ in range(args.repeats)]
        row = {"preset": args.preset, "context": context, "repeats": args.repeats, **{k: statistics.median(r[k] for r in runs) for k in KEYS}}
        rows.append(row)
        print(f"context {context:>3}: cached p50 {row['cached_p50_ms']:.2f} ms (CPU {row['cached_cpu_p50_ms']:.2f}), "
              f"uncached p50 {row['full_p50_ms']:.2f} ms (CPU {row['full_cpu_p50_ms']:.2f}); "
              f"cache {row['cache_speedup']:.1f}x faster by wall time, {row['cache_speedup_cpu']:.1f}x by CPU time "
              f"(medians of {args.repeats} runs)")
    forms = cache_forms(args.preset, args.contexts[0], args.steps)
    print(f"model step at context {args.contexts[0]}: list cache (TrajectoryModel.step) p50 {forms['wall_list_p50_ms']:.2f} ms "
          f"(CPU {forms['cpu_list_p50_ms']:.2f}), ring cache (RingCache.step) p50 {forms['wall_ring_p50_ms']:.2f} ms (CPU {forms['cpu_ring_p50_ms']:.2f})")
    missed = [f"context {r['context']}: {k}={r[k]:.2f} (target {op} {v})" for r in rows if r["context"] >= 32
              for k, (op, v) in TARGETS.items() if not (r[k] <= v if op == "<=" else r[k] >= v)]
    if args.out:
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(), "python": platform.python_version()}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows, "cache_forms": forms}, f, indent=2)
    for m in missed:
        print("target missed:", m, file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
