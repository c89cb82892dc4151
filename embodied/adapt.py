"""Few-shot adaptation: a trained model fitted to a new environment from K demonstrations.

A method is a subclass of :class:`AdaptMethod` registered under a name with
:func:`register`; ``embodied adapt --method NAME`` and :func:`make_method` find it in
:data:`METHODS`, so a new method needs no change to the command line (its options come in
as ``--option KEY=VALUE``). A method says

- what it adds to the base model before training (:meth:`AdaptMethod.prepare`; nothing
  for ``full`` and ``head``),
- which parameters train (:meth:`AdaptMethod.trainable`),
- how it fits them (:meth:`AdaptMethod.fit`; by default AdamW on the model's own loss over
  the demonstrations' windows, warmup then cosine),
- and how its result is saved (:attr:`AdaptMethod.saves`): ``"checkpoint"`` writes a whole
  run folder (``full``), ``"adapter"`` writes only :meth:`AdaptMethod.adapted_state` as
  ``adapter.safetensors``, tied to its base checkpoint by the SHA-256 of the base's
  ``model.safetensors`` (``head``).

Both kinds write ``adapt.json`` beside it: the method, its options, the base checkpoint and
its hash, and what the adaptation spent (demonstrations, frames, gradient steps, trainable
parameters, wall time). :func:`load_model` opens a run folder, a checkpoint folder or an
adapted folder alike (an adapter's base is found and checked by hash), which is how
``FoundationPolicy.load`` and ``embodied eval`` take an adapted model unchanged.

The methods planned next fit this interface: LoRA adds low-rank factors beside the
attention and MLP matrices in ``prepare`` and trains only those; learned prefix (soft
prompt) tokens add a parameter of extra goal tokens in ``prepare``; in-context
conditioning overrides ``fit`` to take no gradient step and keep a demonstration's tokens
as its adapted state.

This module is core: it takes tensors and iterables of batches, never envs or stores.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal

import torch
import torch.nn as nn

from embodied.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    load_tensors,
    model_hash,
    read_json,
    save_tensors,
    write_json,
)
from embodied.config import AdaptConfig, ModelConfig, TrainConfig
from embodied.errors import ConfigError, EmbodiedError
from embodied.model import TrajectoryModel
from embodied.train import lr_at, pick_device

Batch = dict[str, torch.Tensor]
"""A window batch of :class:`embodied.datasets.WindowSampler` (``instruction`` indexes the goals)."""

FORMAT = "embodied-adapter"
"""Value of ``format`` in ``adapt.json``."""
VERSION = 1
"""Layout version of ``adapt.json``; a reader refuses a newer one."""
ADAPT_JSON = "adapt.json"
ADAPTER_FILE = "adapter.safetensors"


# ---------------------------------------------------------------------------- methods
class AdaptMethod:
    """One way of adapting a :class:`~embodied.model.TrajectoryModel`; subclasses are registered with :func:`register`."""

    name: ClassVar[str] = ""
    """The registered name (set by :func:`register`)."""
    saves: ClassVar[Literal["checkpoint", "adapter"]] = "adapter"
    """``"checkpoint"``: a whole run folder; ``"adapter"``: only :meth:`adapted_state`, tied to the base by hash."""
    default_lr: ClassVar[float] = 1e-3
    """Peak learning rate when ``AdaptConfig.lr`` is None."""
    option_names: ClassVar[tuple[str, ...]] = ()
    """Options the method accepts (``--option KEY=VALUE``)."""

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.option_names))
        if unknown:
            takes = ", ".join(self.option_names) or "no options"
            raise ConfigError(f"method {self.name!r} does not take option(s) {', '.join(unknown)}; it takes {takes}")
        self.options: dict[str, Any] = dict(options)

    def prepare(self, model: TrajectoryModel) -> None:
        """Add whatever the method trains beyond the base weights (low-rank factors, prefix tokens). Default: nothing."""

    def trainable(self, model: TrajectoryModel) -> dict[str, nn.Parameter]:
        """Name -> parameter of everything the method trains (names as in ``model.named_parameters()``)."""
        raise NotImplementedError

    def adapted_state(self, model: TrajectoryModel) -> dict[str, torch.Tensor]:
        """The tensors an adapter file holds: by default every trainable parameter, by name."""
        return {name: p.detach() for name, p in self.trainable(model).items()}

    def load_adapted(self, model: TrajectoryModel, tensors: dict[str, torch.Tensor]) -> None:
        """Put an adapter's tensors into a prepared base model; refuses missing, extra or mis-shaped tensors."""
        expected = self.adapted_state(model)
        if set(tensors) != set(expected):
            missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
            raise CheckpointError(f"the {self.name!r} adapter does not fit this model (missing {missing[:3]}, unexpected {extra[:3]}); "
                                  "adapt again from this base")
        with torch.no_grad():
            for name, t in tensors.items():
                if t.shape != expected[name].shape:
                    raise CheckpointError(f"the {self.name!r} adapter's {name} has shape {tuple(t.shape)}, the model's {tuple(expected[name].shape)}; "
                                          "adapt again from this base")
                expected[name].copy_(t.to(expected[name].dtype))

    def fit(self, model: TrajectoryModel, batches: Iterator[Batch], goals: torch.Tensor, cfg: AdaptConfig, device: torch.device,
            on_step: Callable[[int, float], None] | None = None) -> list[float]:
        """Train :meth:`trainable` on ``batches`` for ``cfg.steps`` steps; returns the loss of each step.

        ``on_step(step, loss)`` (optional) hears each finished step (1-based), e.g. to move a progress bar.

        AdamW (betas 0.9, 0.95) over the model's weight-decay groups of the trainable
        parameters, linear warmup then cosine to a tenth of the peak, gradients clipped; every
        other parameter has ``requires_grad`` off, so it stays bit-identical. A fraction
        ``cfg.action_dropout`` of the frames has its action hidden (:func:`hide_actions`).
        """
        params = self.trainable(model)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        lr = cfg.lr or self.default_lr
        losses: list[float] = []
        if cfg.steps and params:
            opt = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=lr, betas=(0.9, 0.95))
            schedule = TrainConfig(steps=cfg.steps, lr=lr, warmup=cfg.warmup, min_lr_ratio=0.1)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, schedule) / lr)
            model.train()
            for step in range(cfg.steps):
                b = hide_actions({k: v.to(device, non_blocking=True) for k, v in next(batches).items()}, cfg.action_dropout)
                loss, _ = model.loss(b, goals[b["instruction"]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                if not (torch.isfinite(loss) and torch.isfinite(gnorm)):
                    raise EmbodiedError(f"the adaptation loss or gradient became non-finite at step {step}; lower --lr (it was {lr:g})")
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                if on_step is not None:
                    on_step(step + 1, losses[-1])
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
        return losses


def hide_actions(batch: Batch, fraction: float) -> Batch:
    """``batch`` with the action of a random ``fraction`` of its frames masked (the token becomes ``no_action``, the policy target drops).

    Expert actions change slowly, so a model that sees the previous action learns to copy it
    and never reads the state; hiding some actions makes the state the only cue there.
    """
    if fraction <= 0:
        return batch
    mask = batch["action_mask"]
    keep = torch.rand(mask.shape, device=mask.device) >= fraction
    return {**batch, "action_mask": mask & keep}


METHODS: dict[str, type[AdaptMethod]] = {}
"""Registered adaptation methods by name (filled by :func:`register`)."""


def register(name: str) -> Callable[[type[AdaptMethod]], type[AdaptMethod]]:
    """Class decorator: register an :class:`AdaptMethod` subclass under ``name``."""

    def deco(cls: type[AdaptMethod]) -> type[AdaptMethod]:
        if name in METHODS:
            raise ValueError(f"adaptation method {name!r} is registered twice ({METHODS[name].__name__} and {cls.__name__})")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def make_method(name: str, options: dict[str, Any] | None = None) -> AdaptMethod:
    """The registered method ``name`` with its options; a one-line :class:`ConfigError` for an unknown name."""
    if name not in METHODS:
        raise ConfigError(f"unknown adaptation method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](**(options or {}))


@register("full")
class FullFineTune(AdaptMethod):
    """Every weight trains; the result is a whole checkpoint (a run folder like ``embodied train``'s)."""

    saves = "checkpoint"
    default_lr = 3e-4

    def trainable(self, model: TrajectoryModel) -> dict[str, nn.Parameter]:
        return dict(model.named_parameters())


HEADS = ("action_head", "state_head", "outcome_head", "term_head", "change_head", "latent_head")
"""The output heads of :class:`~embodied.model.TrajectoryModel` (policy, dynamics, reward/cost/success, per-term cost, reward change, image latent)."""


@register("head")
class HeadsOnly(AdaptMethod):
    """Only the output heads train (the trunk, encoders and normaliser stay the base's); saves a small adapter."""

    saves = "adapter"
    default_lr = 1e-3

    def trainable(self, model: TrajectoryModel) -> dict[str, nn.Parameter]:
        return {n: p for n, p in model.named_parameters() if n.split(".", 1)[0] in HEADS}


# ---------------------------------------------------------------------------- adapting
@dataclass
class AdaptResult:
    """What one adaptation did and spent."""

    method: str
    steps: int
    """Gradient steps taken."""
    trainable_params: int
    total_params: int
    wall_s: float
    """Seconds of fitting (from the first batch to the last step, synchronised on CUDA)."""
    lr: float
    device: str
    losses: list[float] = field(default_factory=list)
    """Training loss of each step."""
    loss_before: float | None = None
    """Mean loss on the evaluation batches before fitting (None without them)."""
    loss_after: float | None = None


@torch.no_grad()
def mean_loss(model: TrajectoryModel, batches: Iterable[Batch], goals: torch.Tensor, device: torch.device) -> float:
    """Mean of the model's total loss over ``batches`` (eval mode)."""
    was_training = model.training
    model.eval()
    values = []
    for batch in batches:
        b = {k: v.to(device) for k, v in batch.items()}
        values.append(float(model.loss(b, goals[b["instruction"]])[0]))
    model.train(was_training)
    return sum(values) / max(len(values), 1)


def adapt(model: TrajectoryModel, method: AdaptMethod, batches: Iterable[Batch], goals: torch.Tensor, cfg: AdaptConfig,
          eval_batches: list[Batch] | None = None, device: str | None = None,
          on_step: Callable[[int, float], None] | None = None) -> AdaptResult:
    """Adapt ``model`` in place with ``method`` on the demonstrations' ``batches``.

    ``goals`` is (n_instructions, goal_dim), indexed by each batch's ``instruction``;
    ``eval_batches`` (optional) measure the mean loss before and after; ``on_step(step, loss)``
    (optional) hears each gradient step.
    """
    if cfg.window > model.cfg.context:
        raise ConfigError(f"--window {cfg.window} exceeds the base model's context ({model.cfg.context}); pass --window {model.cfg.context} or less")
    dev = pick_device(device)
    torch.manual_seed(cfg.seed)
    method.prepare(model)
    model.to(dev)
    goals = goals.to(dev)
    before = mean_loss(model, eval_batches, goals, dev) if eval_batches else None
    t0 = time.perf_counter()
    losses = method.fit(model, iter(batches), goals, cfg, dev, on_step=on_step)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    wall = time.perf_counter() - t0
    after = mean_loss(model, eval_batches, goals, dev) if eval_batches else None
    return AdaptResult(
        method=method.name, steps=len(losses), trainable_params=sum(p.numel() for p in method.trainable(model).values()),
        total_params=model.num_params(), wall_s=wall, lr=cfg.lr or method.default_lr, device=str(dev), losses=losses,
        loss_before=before, loss_after=after,
    )


# ---------------------------------------------------------------------------- saving and loading
def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint folder from a run folder (its best checkpoint, else its latest) or a checkpoint folder."""
    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"{folder} does not exist; pass a run folder (the --out of `embodied train`) or a checkpoint folder")
    if (folder / "checkpoints").is_dir():
        manager = CheckpointManager(folder)
        best = manager.best() or manager.latest()
        if best is None:
            raise CheckpointError(f"no checkpoint in {folder}; train one with `embodied train --out {folder}`")
        return best
    return folder


def is_adapted(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds the result of an adaptation (``adapt.json``)."""
    return (Path(path) / ADAPT_JSON).is_file()


def read_record(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``adapt.json`` of an adapted folder, checked for its format and version."""
    path = Path(folder) / ADAPT_JSON
    record = read_json(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("saves") not in ("checkpoint", "adapter"):
        raise CheckpointError(f"{path} is not an embodied adaptation record; adapt again into a new --out")
    if not isinstance(record.get("version"), int) or record["version"] > VERSION:
        raise CheckpointError(f"{path} has layout version {record.get('version')!r}, newer than this embodied reads ({VERSION}); upgrade embodied")
    return record


def save_adapted(out: str | os.PathLike[str], method: AdaptMethod, model: TrajectoryModel, base: str | os.PathLike[str],
                 base_config: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Write an adapted model to ``out`` and return its ``adapt.json`` record.

    ``base`` is the base checkpoint folder, ``base_config`` its config and ``record`` what
    the caller adds (spend, data, settings). ``"checkpoint"`` methods write
    ``out/checkpoints/step-N`` (config: the base's plus ``adapt``); ``"adapter"`` methods
    write ``out/adapter.safetensors``.
    """
    out, base = Path(out), Path(base).resolve()
    if is_adapted(out) or (out / "checkpoints").exists() or (out / ADAPTER_FILE).exists():
        raise EmbodiedError(f"{out} already holds a model; choose a new --out (nothing was changed)")
    digest = model_hash(base)
    full = {
        "format": FORMAT, "version": VERSION, "method": method.name, "options": method.options, "saves": method.saves,
        "base": {"checkpoint": str(base), "relative": os.path.relpath(base, out.resolve()), "hash": digest},
        **record,
    }
    if method.saves == "checkpoint":
        steps = int(record.get("spend", {}).get("gradient_steps", 0))
        CheckpointManager(out, keep_last=1).save(steps, config={**base_config, "adapt": full}, model=model.state_dict(),
                                                 extra={"step": steps, "final": True, "metrics": {}})
    else:
        save_tensors(out / ADAPTER_FILE, method.adapted_state(model), {"embodied.adapter": method.name, "embodied.base_hash": digest})
        full["tensors"] = ADAPTER_FILE
        full["adapter_bytes"] = (out / ADAPTER_FILE).stat().st_size
    write_json(out / ADAPT_JSON, full)
    return full


def _model_from_checkpoint(folder: Path, map_location: str | torch.device) -> tuple[TrajectoryModel, dict[str, Any]]:
    ck = load_checkpoint(folder, map_location=map_location)
    if not isinstance(ck.config.get("model"), dict):
        raise CheckpointError(f"{folder} has no model config; it is not a checkpoint of `embodied train`")
    model = TrajectoryModel(ModelConfig.from_json(ck.config["model"]))
    model.load_state_dict(ck.model)
    return model, ck.config


def find_base(folder: str | os.PathLike[str], record: dict[str, Any], base: str | os.PathLike[str] | None = None) -> Path:
    """The base checkpoint of an adapter: ``base`` if given, else where ``adapt.json`` says (absolute, then relative)."""
    if base is not None:
        return resolve_checkpoint(base)
    ref = record.get("base") or {}
    for candidate in (ref.get("checkpoint"), ref.get("relative") and Path(folder).resolve() / ref["relative"]):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise CheckpointError(f"the base checkpoint of adapter {folder} ({ref.get('checkpoint')}) is missing; put it back, "
                          "or load with base=<its checkpoint folder>")


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
               base: str | os.PathLike[str] | None = None) -> tuple[TrajectoryModel, dict[str, Any]]:
    """The model (eval mode) and config of a run folder, a checkpoint folder or an adapted folder.

    An adapter is put on its base checkpoint (``base`` overrides where to find it) only when
    the base's ``model.safetensors`` has the SHA-256 the adapter recorded; otherwise a
    one-line :class:`~embodied.checkpoint.CheckpointError`. The config of an adapted model
    carries the ``adapt`` record.
    """
    folder = Path(path)
    if is_adapted(folder):
        record = read_record(folder)
        if record["saves"] == "adapter":
            base_folder = find_base(folder, record, base)
            expected, actual = (record.get("base") or {}).get("hash"), model_hash(base_folder)
            if actual != expected:
                raise CheckpointError(
                    f"adapter {folder} was made from a base whose weights hash to {str(expected)[:16]}..., but {base_folder} hashes to "
                    f"{actual[:16]}...: it is another checkpoint; load the adapter on the base it was made from"
                )
            model, config = _model_from_checkpoint(base_folder, map_location)
            method = make_method(str(record.get("method")), record.get("options") or {})
            method.prepare(model)
            name = str(record.get("tensors", ADAPTER_FILE))
            if Path(name).name != name:
                raise CheckpointError(f"{folder / ADAPT_JSON} names an adapter file outside its folder ({name!r}); adapt again")
            method.load_adapted(model, load_tensors(folder / name, map_location))
            return model.eval(), {**config, "adapt": record}
    model, config = _model_from_checkpoint(resolve_checkpoint(folder), map_location)
    return model.eval(), config


__all__ = [
    "ADAPT_JSON", "ADAPTER_FILE", "AdaptMethod", "AdaptResult", "FullFineTune", "HeadsOnly", "METHODS", "adapt", "find_base", "hide_actions",
    "is_adapted", "load_model", "make_method", "mean_loss", "read_record", "register", "resolve_checkpoint", "save_adapted",
]
