"""``embodied adapt``: a base run and K demonstrations in, an adapted model out (application layer).

Wires the data layer to :mod:`embodied.adapt`: the demonstrations' instruction embeddings
(with the base run's sentence encoder), a window sampler over the K episodes (in RAM: they
are few), the base model with its own normalisation statistics, the registered method,
and the record of what the adaptation spent (``adapt.json``; the training loss of each
step also goes to ``metrics.jsonl``, so ``embodied report`` draws it).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from embodied import specs
from embodied.config import AdaptConfig, AdaptRunConfig, parse_kv
from embodied.errors import ConfigError, EmbodiedError

LOSS_BATCHES = 4
"""Batches (of a second, fixed draw of the demonstrations' windows) on which the loss before and after is measured."""


def adapt_from_stores(run: AdaptRunConfig, cfg: AdaptConfig, progress: bool = True) -> dict[str, Any]:
    """Adapt ``run.ckpt`` on the episodes of ``run.data`` into ``run.out``; returns the ``adapt.json`` record.

    With ``progress``, a bar on stderr shows the gradient steps and the latest loss."""
    from embodied.adapt import adapt, is_adapted, load_model, make_method, resolve_checkpoint, save_adapted
    from embodied.cli_data import ensure_embeddings
    from embodied.datasets import EpisodeStore, SamplerConfig, WindowSampler
    from embodied.language import with_tokens
    from embodied.training_data import MODEL_KEYS, InstructionContrast

    t0 = time.perf_counter()
    if not run.ckpt:
        raise ConfigError("name the base model with --ckpt runs/R (a run folder or a checkpoint folder)")
    if not run.data:
        raise ConfigError("name the demonstrations with --data K_DEMOS.zarr (record them with `embodied collect --env ID --episodes K`)")
    method = make_method(run.method, parse_kv(run.option))
    out = Path(run.out)
    if is_adapted(out) or (out / "checkpoints").exists():
        raise ConfigError(f"{out} already holds a model; choose a new --out (nothing was changed)")
    base = resolve_checkpoint(run.ckpt)
    model, config = load_model(base)
    keys = MODEL_KEYS + ((specs.PIXELS,) if model.cfg.pixels else ())
    try:
        envs: set[str] = set()
        for url in run.data:
            with EpisodeStore.open(url) as store:
                if model.cfg.pixels and specs.PIXELS not in store.features:
                    raise ConfigError(f"the base model sees {model.cfg.pixels}x{model.cfg.pixels} pixels but {url} has none; "
                                      f"record the demos with --pixels {model.cfg.pixels}")
                envs |= {str(m.get("env_id", "")) for m in store.metas()}
        encoder = with_tokens(run.encoder, model.cfg.lang_tokens) if run.encoder else config.get("encoder")
        key, vectors = ensure_embeddings(list(run.data), encoder, compute=True)
        scfg = SamplerConfig(window=cfg.window, batch_size=cfg.batch_size, keys=keys, seed=cfg.seed, in_ram=True, cover_edges=cfg.cover_edges)
        sampler = WindowSampler(list(run.data), scfg)
        probe = WindowSampler(list(run.data), replace(scfg, seed=cfg.seed + 10_000))
    except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged store the data layer did not name (EmbodiedErrors pass through)
        if isinstance(e, EmbodiedError):
            raise
        detail = " ".join(str(e).split())[:200]
        raise ConfigError(f"cannot read the demonstrations in {', '.join(run.data)} ({type(e).__name__}: {detail}); "
                          f"check them with `embodied data verify` or record them again") from None
    goals = torch.from_numpy(np.stack([np.asarray(vectors[s], dtype=np.float32) for s in sampler.instructions]))
    if goals.shape[1] != model.cfg.goal_dim:
        raise ConfigError(f"the instruction embeddings have {goals.shape[1]} dimensions, the base model takes {model.cfg.goal_dim}; "
                          "pass the base run's --encoder")

    contrast = InstructionContrast(sampler.instructions, cfg.contrast, cfg.seed) if cfg.contrast > 0 else None

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        k = 0
        while True:
            yield sampler.batch(k) if contrast is None else contrast(sampler.batch(k), k)
            k += 1

    from tqdm import tqdm

    bars: list[Any] = []  # opened at the first step, so that a refused setting prints its one-line error alone

    def on_step(step: int, loss: float) -> None:
        if not bars:
            bars.append(tqdm(total=cfg.steps, unit="step", desc=f"adapt ({method.name})", disable=not progress, dynamic_ncols=True))
        bars[0].update(1)
        if step % 10 == 0 or step == cfg.steps:
            bars[0].set_postfix(loss=f"{loss:.3f}", refresh=False)

    try:
        result = adapt(model, method, batches(), goals, cfg, eval_batches=[probe.batch(k) for k in range(LOSS_BATCHES)],
                       device=run.device, on_step=on_step)
    finally:
        for bar in bars:
            bar.close()
    spend = {
        "demos": len(sampler.episodes), "frames": int(sampler.lengths.sum()), "gradient_steps": result.steps,
        "trainable_params": result.trainable_params, "total_params": result.total_params, "wall_s": round(result.wall_s, 3),
        "device": result.device, "total_s": round(time.perf_counter() - t0, 3),  # with loading the base, demos and embeddings
    }
    record = {
        "spend": spend, "data": list(run.data), "envs": sorted(envs), "encoder": key, "settings": {**asdict(cfg), "lr": result.lr},
        "loss_before": result.loss_before, "loss_after": result.loss_after, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    full = save_adapted(out, method, model, base, config, record)
    with open(out / "metrics.jsonl", "w") as f:
        for step, loss in enumerate(result.losses, start=1):
            if step % 10 == 0 or step == len(result.losses):
                f.write(json.dumps({"split": "train", "step": step, "loss": loss}) + "\n")
    return {**full, "out": str(out)}


def format_record(r: dict[str, Any]) -> str:
    """One paragraph for the terminal: what was adapted, where it went, what it spent."""
    s = r["spend"]
    saved = f"adapter {r['out']}/{r['tensors']} ({r['adapter_bytes'] / 1e3:.1f} kB)" if r["saves"] == "adapter" else f"checkpoint in {r['out']}/checkpoints"
    loss = (f"; loss on the demos {r['loss_before']:.3f} -> {r['loss_after']:.3f}" if r.get("loss_before") is not None else "")
    return (f"adapted {r['base']['checkpoint']} with {r['method']} on {s['demos']} demos ({s['frames']} frames): {s['gradient_steps']} gradient steps, "
            f"{s['trainable_params']:,} of {s['total_params']:,} parameters trained, {s['wall_s']:.1f} s on {s['device']}{loss}\n  {saved}; "
            f"evaluate with `embodied eval --ckpt {r['out']} --env ...`")
