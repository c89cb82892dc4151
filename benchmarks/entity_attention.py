"""The entity attention's three formulations, forward + backward, interleaved in one process (CPU or GPU).

    python benchmarks/entity_attention.py [--batch 64] [--window 16] [--d-model 128] [--repeats 30] [--device cpu]

``matmul``: the queries against each frame's entities as tiny batched matmuls (the model before 2026-11-27);
``elementwise``: products and sums over the 8 entities; ``sdpa``: one ``scaled_dot_product_attention`` call with
the frames as batch rows and the queries as heads (what ``EntityEncoder.forward`` does now). Checks that all three
agree, then prints each one's median milliseconds and its speed-up over ``matmul``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from embodied import specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    B, T, Q, d, dev = a.batch, a.window, a.queries, a.d_model, torch.device(a.device)
    E, dh = specs.N_OBJECTS + specs.N_ZONES + specs.N_HAZARDS, a.d_model // a.queries
    e = torch.randn(B, T, E, d, device=dev, requires_grad=True)  # (B, T, E, d) entity embeddings
    queries = torch.randn(B, Q, dh, device=dev, requires_grad=True)  # (B, Q, dh) the instruction's queries
    key, value = torch.nn.Linear(d, d, bias=False).to(dev), torch.nn.Linear(d, d).to(dev)

    def matmul() -> torch.Tensor:
        q = queries.view(B, 1, Q, 1, dh)
        k, v = (lin(e).view(B, T, E, Q, dh).transpose(2, 3) for lin in (key, value))  # (B, T, Q, E, dh)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # (B, T, Q, 1, E)
        return (w @ v).flatten(2)

    def elementwise() -> torch.Tensor:
        k, v = (lin(e).view(B, T, E, Q, dh) for lin in (key, value))
        w = torch.softmax((k * queries.view(B, 1, 1, Q, dh)).sum(-1) / math.sqrt(dh), dim=2)  # (B, T, E, Q)
        return (w[..., None] * v).sum(2).flatten(2)

    def sdpa() -> torch.Tensor:
        k, v = (lin(e).view(B * T, E, Q, dh).transpose(1, 2) for lin in (key, value))  # (B * T, Q, E, dh)
        q = queries[:, None].expand(B, T, Q, dh).reshape(B * T, Q, 1, dh)
        return F.scaled_dot_product_attention(q, k, v).view(B, T, Q * dh)

    fns = (matmul, elementwise, sdpa)
    with torch.no_grad():
        for f in fns[1:]:
            torch.testing.assert_close(f(), matmul(), atol=1e-5, rtol=1e-4)
    times: dict[str, list[float]] = {f.__name__: [] for f in fns}
    for _ in range(a.repeats):
        for f in fns:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            f().square().sum().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[f.__name__].append(time.perf_counter() - t)
    base = statistics.median(times["matmul"])
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<12} {1e3 * m:8.2f} ms  {base / m:5.2f}x  (B {B}, T {T}, E {E}, Q {Q}, d {d}, {a.device})")


if __name__ == "__main__":
    main()
