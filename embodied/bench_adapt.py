"""``embodied bench adapt``: the K-shot curve of few-shot adaptation (application layer).

For each K it records K expert demonstrations of a held-out environment (collection seeds
from ``demo_seed``, so each set holds the smaller ones), adapts the base model with each
method, trains the base's architecture from fresh weights on the same demonstrations
(``scratch``: the ``full`` method's loop on fresh weights normalised with the
demonstrations' statistics, ``scratch_steps`` steps at lr 1e-3), and evaluates every model on the fixed
evaluation seeds beside the unadapted base (zero-shot) and the scripted expert. Each point
carries its success with a 95% Wilson interval and what it spent.

Everything goes under ``out``: ``demos-K<k>.zarr``, ``k<k>/<method>`` (adapted runs, loadable
with ``embodied eval --ckpt``) and ``adapt_curve.json``, rewritten after every point; a rerun
reuses the demonstrations and runs it finds, so an interrupted curve resumes.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from embodied.config import BenchAdaptConfig
from embodied.errors import ConfigError

CURVE_FILE = "adapt_curve.json"
KIND = "embodied-adapt-curve"
"""Value of ``kind`` in ``adapt_curve.json`` (``embodied report`` looks for it)."""
SCRATCH = "scratch"
SCRATCH_LR = 1e-3
TARGET_K = 10
"""The issue's target: at K = 10, adapted success >= 2x scratch and > zero-shot."""


def _point(row: dict[str, Any], k: int, method: str, spend: dict[str, Any], run: str) -> dict[str, Any]:
    keep = ("success", "success_ci", "episodes", "mean_return", "mean_length", "invalid")
    return {"k": k, "method": method, **{key: row[key] for key in keep}, "spend": spend, "run": run}


def _fresh_init(model_cfg: Any, config: dict[str, Any], store: str, folder: Path) -> Path:
    """A checkpoint of fresh weights of the base's architecture, normalised with ``store``'s statistics (the scratch baseline's start)."""
    import torch

    from embodied.checkpoint import save_checkpoint
    from embodied.datasets import EpisodeStore
    from embodied.model import TrajectoryModel

    if (folder / "model.safetensors").exists():
        return folder
    torch.manual_seed(0)
    model = TrajectoryModel(model_cfg)
    with EpisodeStore.open(store) as s:
        stats = s.stats()
    state, reward = stats["state"], stats.get("reward")
    model.set_normalizer(torch.as_tensor(state.mean), torch.as_tensor(state.std),
                         float(reward.mean) if reward is not None else 0.0, float(reward.std) if reward is not None else 1.0)
    kept = {k: v for k, v in config.items() if k != "adapt"}
    return save_checkpoint(folder, config=kept, model=model.state_dict())


def missed_targets(curve: dict[str, Any], k: int = TARGET_K) -> list[str]:
    """The issue's targets at ``k`` that the curve misses (empty: every target holds, or no point at ``k``)."""
    at = {p["method"]: p for p in curve["points"] if p["k"] == k}
    adapted = {m: p for m, p in at.items() if m != SCRATCH}
    if not adapted:
        return []
    best_m, best = max(adapted.items(), key=lambda kv: kv[1]["success"])
    zero = curve["zero_shot"]["success"]
    missed = []
    if best["success"] <= zero:
        missed.append(f"K={k}: best adapted ({best_m}) success {best['success']:.2f} is not above zero-shot {zero:.2f}")
    if SCRATCH in at and best["success"] < 2 * at[SCRATCH]["success"]:
        missed.append(f"K={k}: best adapted ({best_m}) success {best['success']:.2f} is below 2x scratch {at[SCRATCH]['success']:.2f}")
    return missed


def adapt_curve(cfg: BenchAdaptConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the curve of ``cfg`` and write ``cfg.out/adapt_curve.json``; returns its content."""
    from embodied.adapt import METHODS, is_adapted, load_model, read_record, resolve_checkpoint
    from embodied.adapt_data import adapt_from_stores
    from embodied.collect import CollectSpec, collect
    from embodied.config import AdaptConfig, AdaptRunConfig
    from embodied.datasets import EpisodeStore
    from embodied.envs import entry
    from embodied.evaluate import evaluate_policy_on
    from embodied.language import LanguageEncoder
    from embodied.policies import FoundationPolicy
    from embodied.train import pick_device

    if not cfg.ckpt:
        raise ConfigError("name the base model with --ckpt runs/R")
    entry(cfg.env)
    unknown = [m for m in cfg.methods if m != SCRATCH and m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join([*METHODS, SCRATCH])}")
    if not cfg.ks or min(cfg.ks) < 1 or cfg.episodes < 1 or cfg.steps < 1 or cfg.scratch_steps < 1:
        raise ConfigError("--ks must be positive numbers of demos, and --episodes, --steps and --scratch-steps at least 1")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    base = resolve_checkpoint(cfg.ckpt)
    base_model, config = load_model(base)
    device = str(pick_device(cfg.device))
    encoder = LanguageEncoder(config.get("encoder"), device=device)

    def evaluate(model: Any, expert: bool = False) -> dict[str, Any]:
        policy = FoundationPolicy(model, encoder.encode, device=device)
        return evaluate_policy_on([cfg.env], lambda: policy, episodes=cfg.episodes, n_envs=cfg.envs, expert=expert)[0]

    curve: dict[str, Any] = {
        "kind": KIND, "env_id": cfg.env, "base": str(base), "base_config": {k: config.get(k) for k in ("preset", "data", "model")},
        "settings": {k: v for k, v in cfg.__dict__.items() if k not in ("json",)}, "scratch": f"full fine-tuning of fresh weights (normalised with the demos' statistics), {cfg.scratch_steps} steps at lr {SCRATCH_LR:g}",
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}", "device": device,
        "date": time.strftime("%Y-%m-%d"), "points": [],
    }

    def save() -> None:
        curve["missed_targets"] = missed_targets(curve)
        tmp = out / f".{CURVE_FILE}.tmp"
        tmp.write_text(json.dumps(curve, indent=2))
        tmp.replace(out / CURVE_FILE)

    fit = AdaptConfig(steps=cfg.steps, batch_size=cfg.batch_size, window=cfg.window, action_dropout=cfg.action_dropout)
    t0 = time.perf_counter()
    zero = evaluate(base_model, expert=True)
    curve["zero_shot"] = _point(zero, 0, "zero-shot", {"demos": 0, "gradient_steps": 0, "trainable_params": 0, "wall_s": 0.0}, str(base))
    curve["expert"] = {"success": zero["expert_success"], "success_ci": zero["expert_success_ci"]}
    log(f"zero-shot {zero['success']:.2f} [{zero['success_ci'][0]:.2f}, {zero['success_ci'][1]:.2f}], expert {zero['expert_success']:.2f} "
        f"({time.perf_counter() - t0:.0f} s)")
    save()
    for k in sorted(set(cfg.ks)):
        store = out / f"demos-K{k}.zarr"
        if not (store / "zarr.json").exists():
            collect(CollectSpec(out=str(store), env_ids=(cfg.env,), episodes=k, policy="expert", seed=cfg.demo_seed, command="embodied bench adapt"),
                    progress=False)
        with EpisodeStore.open(str(store)) as s:
            if len(s) != k:
                raise ConfigError(f"{store} holds {len(s)} episodes, not {k}; delete it and rerun")
        for method in cfg.methods:
            run = out / f"k{k}" / method
            t1 = time.perf_counter()
            if method == SCRATCH:
                if not is_adapted(run):
                    init = _fresh_init(base_model.cfg, config, str(store), out / f"k{k}" / "scratch-init")
                    adapt_from_stores(AdaptRunConfig(ckpt=str(init), data=(str(store),), method="full", out=str(run), device=cfg.device),
                                      replace(fit, steps=cfg.scratch_steps, lr=SCRATCH_LR))
                spend = read_record(run)["spend"]
            else:
                if not is_adapted(run):
                    adapt_from_stores(AdaptRunConfig(ckpt=str(base), data=(str(store),), method=method, out=str(run), device=cfg.device), fit)
                spend = read_record(run)["spend"]
            row = evaluate(load_model(run)[0])
            curve["points"].append(_point(row, k, method, spend, str(run)))
            save()
            lo, hi = row["success_ci"]
            log(f"K={k:<3} {method:<8} success {row['success']:.2f} [{lo:.2f}, {hi:.2f}]  {spend['gradient_steps']} steps, "
                f"{spend['trainable_params']:,} trainable, {spend['wall_s']:.1f} s fitting ({time.perf_counter() - t1:.0f} s with evaluation)")
    curve["seconds"] = round(time.perf_counter() - t0, 1)
    save()
    return curve


def format_curve(curve: dict[str, Any]) -> str:
    """The curve as a table: one row per K, one column per method (success [95% CI])."""
    methods = list(dict.fromkeys(p["method"] for p in curve["points"]))
    z = curve["zero_shot"]
    lines = [f"{curve['env_id']}: zero-shot {z['success']:.2f} [{z['success_ci'][0]:.2f}, {z['success_ci'][1]:.2f}], "
             f"expert {curve['expert']['success']:.2f}, {z['episodes']} episodes per point",
             "K    " + "".join(f"{m:<20}" for m in methods)]
    for k in sorted({p["k"] for p in curve["points"]}):
        at = {p["method"]: p for p in curve["points"] if p["k"] == k}
        cells = [f"{at[m]['success']:.2f} [{at[m]['success_ci'][0]:.2f}, {at[m]['success_ci'][1]:.2f}]" if m in at else "-" for m in methods]
        lines.append(f"{k:<5}" + "".join(f"{c:<20}" for c in cells))
    lines += [f"target missed: {m}" for m in curve.get("missed_targets", [])]
    return "\n".join(lines)
