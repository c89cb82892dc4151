"""The training loop: AdamW with warmup + cosine, bf16 autocast and compiled blocks on CUDA, fp32 on CPU.

The loop takes tensors, never stores: a ``batches(start)`` factory yields batch dicts (the
window sampler's format) from batch number ``start`` on, and ``goals`` maps each batch's
``instruction`` indices to sentence embeddings. The application layer (``embodied train``)
builds both from episode stores.

Resuming is exact on CPU: a checkpoint holds the weights, the optimizer and scheduler
states, every RNG state and the number of batches consumed, and batch ``k`` of the sampler
depends only on ``k``. Under ``torchrun`` each rank reads every ``world``-th batch (DDP
averages the gradients) and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from embodied import specs
from embodied.checkpoint import CheckpointManager, capture_rng, load_checkpoint, restore_rng
from embodied.config import ModelConfig, TrainConfig
from embodied.errors import ConfigError, EmbodiedError
from embodied.model import TrajectoryModel, policy_targets

Batch = dict[str, torch.Tensor]


class TrainingDiverged(EmbodiedError):
    """Too many consecutive non-finite steps; the last good checkpoint is kept."""

    exit_code = 1


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Warmup (linear from 0) then cosine to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the ``torchrun`` process group if launched by it (NCCL on CUDA, gloo on CPU)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def pick_device(name: str | None = None) -> torch.device:
    """The requested device, else CUDA (this rank's GPU) when available, else CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


# ---------------------------------------------------------------------------- metrics
def _auc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Area under the ROC curve (ties counted half); None when one class is absent."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return None
    ranks = torch.cat([pos, neg]).argsort().argsort().double() + 1
    # average ranks of ties
    allv = torch.cat([pos, neg])
    uniq, inv = allv.unique(return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=torch.double).index_add_(0, inv, ranks)
    counts = torch.zeros(len(uniq), dtype=torch.double).index_add_(0, inv, torch.ones_like(ranks))
    ranks = (sums / counts)[inv]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def evaluate(model: TrajectoryModel, batches: Iterable[Batch], goals: torch.Tensor, device: torch.device, horizons: tuple[int, ...] = (1, 5, 10)) -> dict[str, float | None]:
    """Intrinsic metrics on held-out batches: action NLL and MSE, k-step imagined state error, reward MSE, success and cost AUC."""
    model.eval()
    nll, mse, rew, n_act, n_rew = 0.0, 0.0, 0.0, 0, 0
    state_err = {h: [0.0, 0] for h in horizons}
    succ_s, succ_y, cost_s, cost_y = [], [], [], []
    for batch in batches:
        b = {k: v.to(device) for k, v in batch.items()}
        goal = goals[b["instruction"]].to(device)
        out = model(b, goal)
        am = b["action_mask"] & b["mask"]
        logits = model.action_logits(out["h_pol"]).float()
        action, pm = policy_targets(b)  # what the policy is meant to imitate: the expert's labels where the store has them
        target = model.action_bin(action)
        ce = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view(target.shape).sum(-1)
        pred = model.decode_action(logits)
        nll += float(ce[pm].sum())
        mse += float((pred - action).pow(2).mean(-1)[pm].sum())
        n_act += int(pm.sum())
        o, at, keep = model.action_outcomes(out, b["state_mask"] & b["mask"])
        om = at(b.get("reward_mask", am) & am) & keep
        r = model.expected_reward(o)
        rew += float((r - at(b["reward"])).pow(2)[om].sum())
        n_rew += int(om.sum())
        succ_s.append(o["success_logit"][om].float().cpu())
        succ_y.append(at(b["success"])[om].float().cpu())
        cost_s.append(o["cost_logit"][om].float().cpu())
        cost_y.append((at(b["cost"])[om] > 0).float().cpu())
        _imagined_error(model, b, goal, state_err)
    model.train()
    out_m: dict[str, float | None] = {
        "action_nll": nll / max(n_act, 1),
        "action_mse": mse / max(n_act, 1),
        "reward_mse": rew / max(n_rew, 1),
        "success_auc": _auc(torch.cat(succ_s), torch.cat(succ_y)) if succ_s else None,
        "cost_auc": _auc(torch.cat(cost_s), torch.cat(cost_y)) if cost_s else None,
    }
    for h, (err, n) in state_err.items():
        out_m[f"state_err_{h}"] = err / n if n else None
    return out_m


def _imagined_error(model: TrajectoryModel, b: Batch, goal: torch.Tensor, acc: dict[int, list[float]]) -> None:
    """Open-loop rollouts from each window's first state with its true actions (``TrajectoryModel.imagine``);
    mean absolute error after h steps over the state's time-varying dimensions (``specs.DYNAMIC_DIMS``), raw units."""
    T = b["state"].shape[1]
    full = b["mask"] & b["action_mask"] & b["state_mask"]
    H = max([h for h in acc if h < T], default=0)
    if H == 0:
        return
    ok = full[:, : H + 1].all(1)  # windows whose first H + 1 frames are real with actions
    if not ok.any():
        return
    dims = torch.tensor(specs.DYNAMIC_DIMS, device=b["state"].device)
    states = b["state"][ok].float()
    pred = model.imagine(model.start(goal[ok]), states[:, 0], b["timestep"][ok, 0], b["action"][ok, :H])["state"]
    for h in acc:
        if h <= H:
            err = (pred[:, h - 1] - states[:, h]).index_select(-1, dims).abs().mean(-1)
            acc[h][0] += float(err.sum())
            acc[h][1] += int(ok.sum())


# ---------------------------------------------------------------------------- the loop
def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    batches: Callable[[int], Iterator[Batch]],
    goals: torch.Tensor,
    out: str | os.PathLike[str],
    *,
    normalizer: dict[str, Any] | None = None,
    eval_batches: Callable[[], Iterable[Batch]] | None = None,
    resume: bool = False,
    device: str | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    fault: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run in ``out``; returns a summary with the latest metrics.

    ``batches(start)`` yields this rank's batches from batch number ``start`` on (the caller
    interleaves ranks); ``goals`` is (n_instructions, goal_dim); ``normalizer`` holds
    ``state_mean``, ``state_std``, ``reward_mean``, ``reward_std``; ``meta`` (JSON) is saved in
    each checkpoint's config. ``fault(step, loss)`` may replace the loss (tests inject NaN).
    """
    if cfg.window > model_cfg.context:
        raise ConfigError(f"window={cfg.window} exceeds the model's context={model_cfg.context}")
    dev = pick_device(device)
    dist = init_distributed(dev)
    out = Path(out)
    manager = CheckpointManager(out, keep_last=cfg.keep_last, keep_best=True, mode="min")
    torch.manual_seed(cfg.seed)
    model = TrajectoryModel(model_cfg)
    if normalizer:
        model.set_normalizer(**normalizer)
    model.to(dev)
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg) / cfg.lr)
    step, consumed, bad_total, best = 0, 0, 0, None
    if not resume and manager.latest() is not None:
        raise EmbodiedError(f"{out} already holds a run; pass --resume to continue it, or choose a new --out (nothing was changed)")
    if resume:
        latest = manager.latest()
        if latest is None:
            raise EmbodiedError(f"nothing to resume in {out} (no checkpoint there); drop --resume to start a new run")
        ck = load_checkpoint(latest, training_state=True, map_location="cpu")
        model.load_state_dict(ck.model)
        model.to(dev)
        opt.load_state_dict(ck.optimizer)
        sched.load_state_dict(ck.scheduler)
        step, consumed = int(ck.extra["step"]), int(ck.extra["consumed"])
        bad_total, best = int(ck.extra.get("bad_steps", 0)), ck.extra.get("best")
        restore_rng(ck.rng)
    ddp_model: torch.nn.Module = model
    loss_fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] = model.loss
    if dev.type == "cuda" and cfg.compile:
        if dist.world > 1:  # DDP's hooks sit on the wrapper: compile the blocks inside it
            for block in model.blocks:
                block.compile()
        else:  # one graph for the whole step's forward: blocks, CNN, heads and losses
            loss_fn = torch.compile(model.loss)
    if dist.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def global_count(n: torch.Tensor) -> torch.Tensor:
        """A mask count summed over the ranks, over their number: each rank divides its masked sums by it, so DDP's
        average of the ranks' gradients is that of the masked mean over the global batch, as one process takes it
        (a rank's own count would weight its frames by how much padding and how many episode ends it drew)."""
        n = n.detach().clone()
        torch.distributed.all_reduce(n)
        return n.clamp(min=1.0) / dist.world

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    goals = goals.to(dev)
    config = {"model": model_cfg.to_json(), "train": asdict(cfg), "world": dist.world, **(meta or {})}
    writer = _Log(out) if dist.main else None
    metrics: dict[str, Any] = {}
    tokens_per_step = cfg.batch_size * (2 * cfg.window + model_cfg.n_goal_tokens) * dist.world

    def save(final: bool = False) -> None:
        if not dist.main:
            return
        metric = metrics.get("action_nll") if metrics else None
        nonlocal best
        if metric is not None and (best is None or metric < best):
            best = metric
        manager.save(
            step, metric, config=config, model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
            rng=capture_rng(), extra={"step": step, "consumed": consumed, "bad_steps": bad_total, "best": best, "metrics": metrics, "final": final},
        )

    weights = {"success": cfg.success_weight}
    it = batches(consumed)
    bar = _progress(cfg.steps, step, progress and dist.main)
    bad_run, t_last, tok_last = 0, time.perf_counter(), 0
    try:
        while step < cfg.steps:
            batch = next(it)
            consumed += 1
            b = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            if cfg.action_dropout > 0:  # hide some input actions from the model; the targets stay
                b["action_input_mask"] = b["action_mask"] & (torch.rand(b["action_mask"].shape, device=dev) >= cfg.action_dropout)
            with amp:
                goal = goals[b["instruction"]]
                loss, terms = (loss_fn(b, goal, weights) if ddp_model is model
                               else model.loss(b, goal, weights, out=ddp_model(b, goal), count=global_count))
            if fault is not None:
                loss = fault(step, loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if not (torch.isfinite(loss) and torch.isfinite(gnorm)):  # skip the step, keep the weights
                bad_run += 1
                bad_total += 1
                if bad_run >= cfg.max_bad_steps:
                    raise TrainingDiverged(
                        f"{bad_run} consecutive non-finite steps at step {step}; stopped, the last good checkpoint in {out} is kept "
                        "(lower --lr or check the data)"
                    )
                continue
            bad_run = 0
            opt.step()
            sched.step()
            step += 1
            tok_last += tokens_per_step
            if step % cfg.log_every == 0 or step == cfg.steps:
                dt = time.perf_counter() - t_last
                tps = tok_last / max(dt, 1e-9)
                t_last, tok_last = time.perf_counter(), 0
                if writer:
                    writer.scalars("train", {"loss": loss.item(), **{k: v.item() for k, v in terms.items()},
                                             "lr": sched.get_last_lr()[0], "tokens_per_s": tps}, step)
                bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tps:,.0f}", refresh=False)
            bar.update(1)
            if eval_batches is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                metrics = _eval(model, eval_batches, goals, dev, cfg, writer, step)
            if step % cfg.save_every == 0 and step < cfg.steps:
                save()
        if eval_batches is not None:
            metrics = _eval(model, eval_batches, goals, dev, cfg, writer, step)
        save(final=True)
    finally:
        bar.close()
        if writer:
            writer.close()
    return {"out": str(out), "step": step, "consumed": consumed, "bad_steps": bad_total, "metrics": metrics, "params": model.num_params(), "device": str(dev)}


def _eval(model: TrajectoryModel, eval_batches: Callable[[], Iterable[Batch]], goals: torch.Tensor, dev: torch.device,
          cfg: TrainConfig, writer: Any, step: int) -> dict[str, Any]:
    batches = [b for _, b in zip(range(cfg.eval_batches), eval_batches())]
    m = evaluate(model, batches, goals, dev)
    if writer:
        writer.scalars("eval", m, step)
    return m


class _Log:
    """Scalars to TensorBoard event files (when tensorboard is installed) and to ``metrics.jsonl`` (always)."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(out / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb: Any = SummaryWriter(str(out / "tb"))
        except ImportError:  # tensorboard not installed: the JSON lines still record everything
            self.tb = None

    def scalars(self, split: str, values: dict[str, Any], step: int) -> None:
        kept = {k: float(v) for k, v in values.items() if v is not None}
        self.jsonl.write(json.dumps({"split": split, "step": step, **kept}) + "\n")
        self.jsonl.flush()
        if self.tb:
            for k, v in kept.items():
                self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb:
            self.tb.close()


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="train", disable=not enabled, dynamic_ncols=True)


def run_info(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Config and latest metrics of a run folder (for ``embodied info``)."""
    manager = CheckpointManager(Path(out))
    latest = manager.latest()
    if latest is None:
        raise EmbodiedError(f"no checkpoint in {out}; train one with `embodied train --out {out}`")
    ck = load_checkpoint(latest, training_state=True)  # `extra` (step, metrics) lives with the training state
    return {"run": str(out), "checkpoint": str(latest), "best": str(manager.best()) if manager.best() else None,
            "config": ck.config, "step": ck.extra.get("step"), "metrics": ck.extra.get("metrics"), "bad_steps": ck.extra.get("bad_steps")}


__all__ = ["TrainConfig", "TrainingDiverged", "train", "evaluate", "lr_at", "run_info", "pick_device", "init_distributed"]
