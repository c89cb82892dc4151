"""Open-loop error of the model's dynamics against a constant-velocity baseline (``embodied bench dynamics``).

On held-out episodes (the part of the run's training stores its ``--holdout`` set aside, by
the sampler's own hash; all valid episodes of a store it never trained on), from start
frames ``t0`` every ``stride`` frames, the model is given the episode so far (up to
``history`` past timesteps and their actions, through its key/value cache) and the episode's
true next actions, and imagines the states after 1 .. H steps without seeing any of them
(:meth:`embodied.model.TrajectoryModel.imagine`). Errors are mean absolute errors over the
state's time-varying dimensions (:data:`embodied.specs.DYNAMIC_DIMS`: end-effector and object
positions in m, velocities in m/s, object yaw cos/sin, joint cos/sin and joint velocities in
rad/s), in raw (unnormalised) units, with a breakdown per group. Baselines: constant velocity
(``s_t0 + h (s_t0 - s_t0-1)``, the last observed change extrapolated) and hold (``s_t0``).

It also times one ``imagine`` call of ``candidates`` sequences of ``steps`` actions from a
context of ``history`` timesteps (median of ``repeats`` calls after warm-up), the cost a
planner or a safety filter pays per control step and search iteration.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

HORIZONS = (1, 5, 10, 25)
TARGET_RATIO_AT_10 = 2.0
"""The model's error at 10 steps must be at most half the constant-velocity baseline's."""


def held_out_episodes(urls: Sequence[str], holdout: float) -> list[dict[str, Any]]:
    """State, action and instruction of each valid episode in the held-out part (``holdout`` > 0) or of every valid one."""
    from embodied import specs
    from embodied.datasets import EpisodeStore, SamplerConfig, WindowSampler

    cfg = SamplerConfig(holdout=holdout, part="heldout" if holdout > 0 else "train", in_ram=False, keys=(specs.STATE, specs.ACTION))
    sampler = WindowSampler(list(urls), cfg)
    stores = [EpisodeStore.open(u) for u in sampler.urls]
    try:
        out = []
        for si, i in sampler.episodes:
            ep = stores[si].episode(i, keys=(specs.STATE, specs.ACTION))
            out.append({"state": ep[specs.STATE], "action": ep[specs.ACTION], "instruction": str(stores[si].meta(i).get(specs.INSTRUCTION, "")),
                        "env_id": stores[si].meta(i).get("env_id", "")})
        return out
    finally:
        for s in stores:
            s.close()


def _windows(episodes: list[dict[str, Any]], history: int, stride: int) -> list[tuple[int, int, int]]:
    """(episode, t0, past) for start frames t0 >= 1 with at least one true next state; past = timesteps of history given."""
    out = []
    for e, ep in enumerate(episodes):
        last = len(ep["state"]) - 1  # the final frame has no action
        for t0 in range(1, last, stride):
            out.append((e, t0, min(t0, history)))
    return out


def open_loop_errors(model: Any, goals: dict[str, np.ndarray], episodes: list[dict[str, Any]], horizons: Sequence[int] = HORIZONS,
                     history: int = 8, stride: int = 4, batch: int = 256) -> dict[str, Any]:
    """Mean absolute open-loop errors after each horizon of the model and both baselines (see the module's docstring)."""
    import torch

    from embodied import specs

    H = max(horizons)
    dev = next(model.parameters()).device
    groups = specs.dynamic_state_dims()
    dims = np.asarray(specs.DYNAMIC_DIMS)
    names = ("model", "constant_velocity", "hold")
    # sums[name][h] = per-dimension absolute error sums over windows, counts[h] = windows reaching t0 + h
    sums = {n: {h: np.zeros(specs.STATE_DIM) for h in horizons} for n in names}
    counts = {h: 0 for h in horizons}
    by_past: dict[int, list[tuple[int, int, int]]] = {}
    for w in _windows(episodes, history, stride):
        by_past.setdefault(w[2], []).append(w)
    with torch.inference_mode():
        for past, ws in sorted(by_past.items()):
            for b0 in range(0, len(ws), batch):
                chunk = ws[b0 : b0 + batch]
                B = len(chunk)
                hist_s = np.zeros((B, past, specs.STATE_DIM), np.float32)
                hist_a = np.zeros((B, past, specs.ACTION_DIM), np.float32)
                cur = np.zeros((B, specs.STATE_DIM), np.float32)
                prev = np.zeros_like(cur)
                fut_a = np.zeros((B, H, specs.ACTION_DIM), np.float32)
                truth = np.full((B, H, specs.STATE_DIM), np.nan, np.float32)
                t0s = np.zeros(B, np.int64)
                goal = np.stack([goals[episodes[e]["instruction"]] for e, _, _ in chunk]).astype(np.float32)
                for j, (e, t0, _) in enumerate(chunk):
                    s, a = episodes[e]["state"], episodes[e]["action"]
                    hist_s[j], hist_a[j] = s[t0 - past : t0], a[t0 - past : t0]
                    cur[j], prev[j], t0s[j] = s[t0], s[t0 - 1], t0
                    n = min(H, len(s) - 1 - t0)
                    fut_a[j, :n] = a[t0 : t0 + n]
                    truth[j, :n] = s[t0 + 1 : t0 + 1 + n]
                tt = torch.as_tensor(t0s, device=dev)
                cache = model.start(torch.as_tensor(goal, device=dev))
                if past:
                    ts = tt[:, None] - past + torch.arange(past, device=dev)
                    cache = model.prefill(cache, torch.as_tensor(hist_s, device=dev), torch.as_tensor(hist_a, device=dev), ts)
                pred = model.imagine(cache, torch.as_tensor(cur, device=dev), tt, torch.as_tensor(fut_a, device=dev))["state"].float().cpu().numpy()
                for h in horizons:
                    ok = ~np.isnan(truth[:, h - 1, 0])
                    if not ok.any():
                        continue
                    real = truth[ok, h - 1]
                    guesses = {"model": pred[ok, h - 1], "constant_velocity": cur[ok] + h * (cur[ok] - prev[ok]), "hold": cur[ok]}
                    for n_, g in guesses.items():
                        sums[n_][h] += np.abs(g - real).sum(0)
                    counts[h] += int(ok.sum())
    result: dict[str, Any] = {"horizons": list(horizons), "windows": {str(h): counts[h] for h in horizons}}
    for n_ in names:
        result[n_] = {str(h): float(sums[n_][h][dims].mean() / max(counts[h], 1)) for h in horizons}
        result[f"{n_}_by_group"] = {g: {str(h): float(sums[n_][h][idx].mean() / max(counts[h], 1)) for h in horizons} for g, idx in groups.items()}
    result["ratio_cv_over_model"] = {str(h): result["constant_velocity"][str(h)] / max(result["model"][str(h)], 1e-12) for h in horizons}
    return result


def time_imagine(model: Any, candidates: int = 16, steps: int = 10, history: int = 8, repeats: int = 30) -> dict[str, float]:
    """Milliseconds per ``imagine`` call of ``candidates`` x ``steps`` from a cached context of ``history`` timesteps (p50, p90)."""
    import torch

    from embodied import specs

    dev = next(model.parameters()).device
    g = torch.ones(1, model.cfg.goal_dim, device=dev) / model.cfg.goal_dim ** 0.5
    times = []
    with torch.inference_mode():
        cache = model.start(g)
        if history:
            cache = model.prefill(cache, torch.zeros(1, history, specs.STATE_DIM, device=dev), torch.zeros(1, history, specs.ACTION_DIM, device=dev),
                                  torch.arange(history, device=dev)[None])
        state = torch.zeros(1, specs.STATE_DIM, device=dev)
        acts = torch.rand(candidates, steps, specs.ACTION_DIM, generator=torch.Generator().manual_seed(0)).to(dev) * 2 - 1
        for i in range(repeats + 5):
            t0 = time.perf_counter()
            model.imagine(cache, state, torch.tensor([history], device=dev), acts)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= 5:
                times.append((time.perf_counter() - t0) * 1e3)
    return {"candidates": candidates, "steps": steps, "history": history, "p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90))}


def bench_dynamics(ckpt: str, data: Sequence[str] = (), horizons: Sequence[int] = HORIZONS, history: int = 8, stride: int = 4,
                   candidates: int = 16, steps: int = 10, device: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Open-loop errors on held-out episodes and imagine's latency for the run or checkpoint ``ckpt``."""
    import torch

    from embodied.cli_data import ensure_embeddings
    from embodied.errors import ConfigError
    from embodied.policies.foundation import load_run

    if not horizons or min(horizons) < 1:
        raise ConfigError(f"--horizons must be >= 1, got {list(horizons)}")
    if history < 0 or stride < 1 or candidates < 1 or steps < 1:
        raise ConfigError("need --history >= 0, --stride >= 1, --candidates >= 1 and --steps >= 1")
    if threads:
        torch.set_num_threads(threads)
    model, config = load_run(ckpt, device)
    trained_on = [str(u) for u in config.get("data", [])]
    urls = list(data) or trained_on
    if not urls:
        raise ConfigError(f"{ckpt} does not name its training data; pass --data D.zarr")
    trained_names = {os.path.basename(t.rstrip("/")) for t in trained_on}  # the held-out hash names a store by its folder name
    seen = [u for u in urls if os.path.basename(u.rstrip("/")) in trained_names]  # a training store, maybe moved or copied
    holdout = float(config.get("holdout", 0.0)) if seen else 0.0
    if seen and (len(seen) != len(urls) or holdout <= 0):
        raise ConfigError("mix of stores the run trained on and others, or a training store without a held-out part; "
                          "pass --data with stores the run never saw (all their episodes count as held out)")
    episodes = held_out_episodes(urls, holdout)
    _, vectors = ensure_embeddings(urls, config.get("encoder"), compute=True)
    goals = {k: np.asarray(v, dtype=np.float32) for k, v in vectors.items()}
    r: dict[str, Any] = {
        "ckpt": str(ckpt), "data": urls, "episodes": len(episodes),
        "which": f"held-out part ({holdout:.0%}) of the training stores" if holdout else "every valid episode (stores the run never trained on)",
        "history": history, "stride": stride, "device": str(next(model.parameters()).device), "params": model.num_params(),
        "dims": "time-varying state dims (specs.DYNAMIC_DIMS), raw units: m, m/s, cos/sin, rad/s",
    }
    r.update(open_loop_errors(model, goals, episodes, horizons, history, stride))
    r["imagine"] = time_imagine(model, candidates, steps, history)
    r["threads"] = torch.get_num_threads()
    return r


def missed_targets(r: dict[str, Any]) -> list[str]:
    """The targets a result misses (empty when 10 is not among its horizons)."""
    ratio = r["ratio_cv_over_model"].get("10")
    if ratio is not None and ratio < TARGET_RATIO_AT_10:
        return [f"open-loop error at 10 steps is {ratio:.2f}x below constant velocity's (target >= {TARGET_RATIO_AT_10:.0f}x)"]
    return []


def format_result(r: dict[str, Any]) -> str:
    hs = [str(h) for h in r["horizons"]]
    lines = [f"{r['ckpt']}: {r['episodes']} episodes ({r['which']}), history {r['history']}, windows every {r['stride']} frames",
             f"mean abs error over {r['dims']}",
             f"{'steps':<20}" + "".join(f"{h:>10}" for h in hs),
             f"{'windows':<20}" + "".join(f"{r['windows'][h]:>10}" for h in hs)]
    for n in ("model", "constant_velocity", "hold"):
        lines.append(f"{n:<20}" + "".join(f"{r[n][h]:>10.4f}" for h in hs))
    lines.append(f"{'cv / model':<20}" + "".join(f"{r['ratio_cv_over_model'][h]:>9.2f}x" for h in hs))
    for g in r["model_by_group"]:
        lines.append(f"  {g:<18}" + "".join(f"{r['model_by_group'][g][h]:>10.4f}" for h in hs) + "   (model)")
        lines.append(f"  {'':<18}" + "".join(f"{r['constant_velocity_by_group'][g][h]:>10.4f}" for h in hs) + "   (constant velocity)")
    im = r["imagine"]
    lines.append(f"imagine {im['candidates']} candidates x {im['steps']} steps on {r['device']} ({r['threads']} threads): "
                 f"p50 {im['p50_ms']:.1f} ms, p90 {im['p90_ms']:.1f} ms")
    return "\n".join(lines)
