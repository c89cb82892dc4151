"""Training speed: tokens/s, step time, time waiting for data, and model FLOPs utilisation (``embodied bench train``).

The step is the training loop's own: :meth:`TrajectoryModel.loss`, AdamW over the same
weight-decay groups (fused on CUDA), bf16 autocast and the whole loss (blocks, CNN, heads)
compiled on CUDA, fp32 on CPU. Batches come from an episode store (state only, or 64x64 pixels: the data benchmark's
store, collected on first use): on a GPU from a device-resident copy when it fits (see
:class:`~embodied.datasets.sampler.DeviceWindows`), else from DataLoader workers.
Instruction embeddings are random vectors: speed does not depend on them.

* ``tokens_per_s``: sequence tokens (goal + 2 per timestep) per second;
* ``step_ms``: median wall time of one step, data included;
* ``data_wait_fraction``: time spent getting the next batch onto the device over all time;
* ``mfu``: model FLOPs per second over the card's bf16 dense peak, with the FLOPs counted as
  the peer script ../shared/bench/plain_gpt_mfu.py counts them (6 x transformer-block
  parameters + 12 x layers x width x sequence, per token), so the two compare; ``mfu_all``
  also counts the pixel CNN, the token encoders and heads, and the policy's present-only pass
  (one more token per frame through the blocks, see :meth:`TrajectoryModel.present`). ``None`` on CPU.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
"""Dense bf16 tensor-core peak FLOP/s by card name (substring of the CUDA device name)."""


def card_peak(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((v for k, v in PEAK_BF16.items() if k in name), None)


def _cnn_flops(model: Any) -> float:
    """Multiply-adds x 2 of one forward pass of the pixel CNN on one image."""
    if model.pixel_enc is None:
        return 0.0
    flops, size = 0.0, model.cfg.pixels
    for layer in model.pixel_enc.net:
        if isinstance(layer, torch.nn.Conv2d):
            size = (size + 2 * layer.padding[0] - layer.kernel_size[0]) // layer.stride[0] + 1
            flops += 2 * size * size * layer.out_channels * layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, torch.nn.Linear):
            flops += 2 * layer.in_features * layer.out_features
    return flops


def bench_train(
    preset_name: str = "small",
    pixels: int = 0,
    window: int = 64,
    batch: int = 64,
    steps: int = 20,
    warmup: int = 5,
    device: str | None = None,
    compile_blocks: bool = True,
    workers: int = 2,
    data: str | None = None,
    progress: Callable[[str], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Time ``steps`` training steps (after ``warmup``) of the ``preset_name`` model; returns the JSON-able results.

    ``overrides`` replace preset fields (e.g. ``d_model=1024, n_layer=8``) to compare shapes of one size.
    """
    from embodied import specs
    from embodied.bench_data import ensure_dataset
    from embodied.collect import CollectSpec, collect
    from embodied.config import preset
    from embodied.datasets import SamplerConfig, WindowSampler, make_loader
    from embodied.datasets.files import StoreFiles
    from embodied.model import TrajectoryModel
    from embodied.train import pick_device
    from embodied.training_data import MODEL_KEYS, device_windows

    log = progress or (lambda s: None)
    dev = pick_device(device)
    if pixels:
        if pixels != 64:
            raise ValueError("the benchmark store has 64x64 pixels; use --pixels 64 or 0")
        url = ensure_dataset(data or "out/bench/data.zarr", 20_000, progress=progress)
    else:
        url = data or "out/bench/state.zarr"
        if not StoreFiles(url).exists("zarr.json"):
            log(f"collecting a state-only store at {url}")
            collect(CollectSpec(out=url, env_ids=("embodied/PointPushZone-v0", "embodied/Arm2PushDir-v0"), episodes=200,
                                policy="noisy:0.5", command="embodied bench train"), progress=False)
    keys = MODEL_KEYS + ((specs.PIXELS,) if pixels else ())
    sampler = WindowSampler(url, SamplerConfig(window=window, batch_size=batch, keys=keys))
    resident = device_windows(sampler, dev)
    source: Any = resident if resident is not None else make_loader(sampler, num_workers=workers, pin_memory=dev.type == "cuda")
    torch.manual_seed(0)
    cfg = preset(preset_name, pixels=pixels, context=max(window, preset(preset_name).context), **overrides)
    model = TrajectoryModel(cfg).to(dev)
    goals = torch.randn(len(sampler.instructions), cfg.goal_dim, device=dev)
    opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=1e-4, betas=(0.9, 0.95), fused=dev.type == "cuda")
    loss_fn = torch.compile(model.loss) if dev.type == "cuda" and compile_blocks else model.loss  # as the training loop does
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    it = iter(source)
    waits, totals = [], []
    log(f"{preset_name}: {model.num_params() / 1e6:.1f}M parameters, window {window}, batch {batch}, pixels {pixels or 'none'}, on {dev}"
        + (" (device-resident data)" if resident is not None else f" ({workers} loader workers)"))
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        b = {k: v.to(dev, non_blocking=True) for k, v in next(it).items()}
        sync()
        t1 = time.perf_counter()
        with amp:
            loss, _ = loss_fn(b, goals[b[specs.INSTRUCTION]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            waits.append(t1 - t0)
            totals.append(t2 - t0)
    seq = cfg.n_goal_tokens + 2 * window
    step_s = statistics.median(totals)
    tokens_per_s = batch * seq / step_s
    n_block = sum(p.numel() for p in model.blocks.parameters())
    flops_tok = 6 * n_block + 12 * cfg.n_layer * cfg.d_model * seq
    other = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("blocks.") and not n.startswith("pixel_enc."))
    flops_all_tok = flops_tok + 6 * other + 3 * _cnn_flops(model) * window / seq  # CNN: fwd + bwd = 3 x fwd, once per frame
    if not cfg.policy_history:  # the present-only policy pass: one more token per frame, attending to G + 1 keys
        flops_all_tok += (6 * n_block + 12 * cfg.n_layer * cfg.d_model * (cfg.n_goal_tokens + 1)) * window / seq
    card, peak = card_peak(dev)
    return {
        "preset": preset_name, "d_model": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "params": model.num_params(), "block_params": n_block, "pixels": pixels, "window": window, "batch": batch,
        "seq": seq, "device": str(dev), "card": card, "compiled": bool(dev.type == "cuda" and compile_blocks),
        "data_source": "device-resident" if resident is not None else f"{workers} loader workers",
        "tokens_per_s": tokens_per_s, "step_ms": step_s * 1e3,
        "data_wait_fraction": sum(waits) / sum(totals),
        "mfu": tokens_per_s * flops_tok / peak if peak else None,
        "mfu_all": tokens_per_s * flops_all_tok / peak if peak else None,
        "steps": steps, "loss": loss.item(),
    }


def format_result(r: dict[str, Any]) -> str:
    mfu = "n/a (CPU)" if r["mfu"] is None else f"{r['mfu']:.3f} (with CNN, encoders and heads {r['mfu_all']:.3f})"
    return (
        f"{r['preset']} ({r['params'] / 1e6:.1f}M params, window {r['window']} -> {r['seq']} tokens, batch {r['batch']}, "
        f"pixels {r['pixels'] or 'none'}) on {r['card']}, data {r['data_source']}\n"
        f"  {r['tokens_per_s']:,.0f} tokens/s, {r['step_ms']:.1f} ms/step, data wait {100 * r['data_wait_fraction']:.1f}%, MFU {mfu}"
    )


__all__ = ["bench_train", "format_result", "card_peak", "PEAK_BF16"]
