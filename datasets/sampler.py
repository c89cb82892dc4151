"""The window sampler: batches of fixed-length windows from one or more episode stores.

Two ways to serve windows, one batch format:

- **in RAM** (the default when the selected features fit ``ram_budget_gb``): every episode
  is decoded once into contiguous NumPy arrays, and each batch is one fancy-indexing
  gather. DataLoader workers started by ``fork`` share these arrays copy-on-write.
- **out of core**: batches come in blocks of ``batches_per_block``; each block decodes
  ``episodes_per_block`` whole episodes (whole chunks, never a window at a time) and
  serves all its batches from them, so every decompressed chunk feeds many windows.

Batch ``k`` is a pure function of ``(seed, k)`` (and, out of core, of the block sizes),
whatever the number of DataLoader workers, so a training run resumes exactly from a
batch index (:attr:`WindowSampler.start_batch`).

A batch is a dict of tensors (``B`` windows of ``T`` frames):

- ``<feature>``: ``(B, T, *shape)`` in the stored dtype (pixels stay uint8);
- ``<feature>_mask``: ``(B, T)`` bool, True where that feature exists for that frame
  (False for the actions of a video, or the action of a final observation); masked
  entries hold 0, never the NaN the store keeps, so ``loss * mask`` stays finite;
- ``mask``: ``(B, T)`` bool, True where the frame is inside its episode (windows of
  episodes shorter than ``T`` are padded at the end);
- ``timestep``: ``(B, T)`` int64 frame index within the episode;
- ``instruction``: ``(B,)`` int64 index into :attr:`WindowSampler.instructions`;
- ``episode``: ``(B,)`` int64 index into :attr:`WindowSampler.episodes`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from embodied import specs

from .store import EpisodeStore, Feature, StoreError


@dataclass(frozen=True)
class SamplerConfig:
    """How windows are drawn. Sizes are in frames, episodes and batches."""

    window: int = 8
    """Frames per window (T)."""
    batch_size: int = 256
    """Windows per batch (B)."""
    keys: tuple[str, ...] | None = None
    """Features to load (default: every feature of the stores)."""
    in_ram: bool | None = None
    """Keep a decoded copy in RAM: True, False (out of core), or None = when it fits ``ram_budget_gb``."""
    ram_budget_gb: float = 8.0
    """Largest in-RAM copy (GiB) chosen automatically."""
    episodes_per_block: int = 64
    """Out of core: episodes decoded together; windows of a batch come from these."""
    batches_per_block: int = 64
    """Out of core: batches served from one block of decoded episodes."""
    valid_only: bool = True
    """Skip episodes marked invalid (diverged) by the collector."""
    holdout: float = 0.0
    """Fraction of episodes set aside for evaluation (chosen by a hash of store and episode uid)."""
    part: str = "train"
    """Which side of the holdout split to sample: train or heldout."""
    shard: tuple[int, int] = (0, 1)
    """(rank, world): this process draws every world-th window of each global batch of batch_size * world."""
    seed: int = 0
    """Seed of the window draw; batch k depends only on (seed, k)."""
    cover_edges: bool = False
    """Draw each window's start from the T - 1 frames before an episode to its last frame and clip it into the episode,
    so the first and last frames (where a task's success is) are in T to 2T - 1 windows like a middle frame's T, and an
    episode shorter than T weighs its frames like a long one's. Off: only starts whose window fits, so the first and last
    frames are each in one window, 1/T of a middle frame's share. Either way no window holds more padding than before."""

    def __post_init__(self) -> None:
        for name in ("window", "batch_size", "episodes_per_block", "batches_per_block"):
            if getattr(self, name) < 1:
                raise StoreError(f"sampler {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.holdout < 1 or self.part not in ("train", "heldout"):
            raise StoreError(f"need 0 <= holdout < 1 and part in (train, heldout), got holdout={self.holdout}, part={self.part!r}")
        if not 0 <= self.shard[0] < self.shard[1]:
            raise StoreError(f"shard must be (rank, world) with 0 <= rank < world, got {self.shard}")


def window_slots(lengths: np.ndarray, window: int, cover_edges: bool) -> np.ndarray:
    """How many draws each episode of ``lengths`` frames offers (its weight): the window starts that fit, or with
    ``cover_edges`` one per start from ``-(window - 1)`` to the last frame (see :attr:`SamplerConfig.cover_edges`)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return lengths + window - 1 if cover_edges else np.maximum(lengths - window + 1, 1)


class _Frames:
    """Decoded episodes laid end to end: feature arrays, per-feature masks and window starts."""

    def __init__(self, parts: list[dict[str, np.ndarray]], features: dict[str, Feature], window: int, cover_edges: bool = False) -> None:
        self.lengths = np.array([len(p["__frames__"]) for p in parts], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.data = {k: np.concatenate([p[k] for p in parts]) for k in features}
        self.masks = {k: np.concatenate([p[f"{k}_mask"] for p in parts]) for k in features}
        for k, x in self.data.items():  # masked frames read as 0 (stored as NaN), so that `loss * mask` stays finite
            if features[k].is_float and not self.masks[k].all():
                x[~self.masks[k]] = 0
        self.mask_matrix = np.stack([self.masks[k] for k in features], axis=1)  # (frames, F): one gather for all masks
        self.timestep = np.concatenate([np.arange(n) for n in self.lengths])
        n_starts = window_slots(self.lengths, window, cover_edges)
        self.start_episode = np.repeat(np.arange(len(parts)), n_starts)
        first = np.concatenate([[0], np.cumsum(n_starts)[:-1]])
        local = np.arange(n_starts.sum()) - np.repeat(first, n_starts)  # the slot within its episode
        if cover_edges:  # slot j starts at j - (T - 1), clipped into the episode
            last = np.maximum(self.lengths - window, 0)[self.start_episode]
            local = np.clip(local - (window - 1), 0, last)
        self.starts = self.offsets[self.start_episode] + local
        self.ends = self.offsets + self.lengths

    def draw(self, rng: np.random.Generator, batch_size: int, window: int, shard: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Random windows: frame indices (B, T), in-episode mask (B, T) and episode numbers (B,).

        The draw is for the global batch of ``batch_size * world`` windows; this shard keeps rows ``rank::world``.
        """
        rank, world = shard
        pick = rng.integers(0, len(self.starts), size=batch_size * world)[rank::world]
        ep = self.start_episode[pick]
        idx = self.starts[pick][:, None] + np.arange(window)[None, :]  # (B, T) global frame index
        inside = idx < self.ends[ep][:, None]
        return np.minimum(idx, self.ends[ep][:, None] - 1), inside, ep

    def gather(self, rng: np.random.Generator, batch_size: int, window: int, out: dict[str, np.ndarray], shard: tuple[int, int] = (0, 1)) -> np.ndarray:
        """Draw random windows into ``out`` (features, ``_masks`` and the timesteps in ``_index``); returns their episodes."""
        idx, inside, ep = self.draw(rng, batch_size, window, shard)
        for k, v in self.data.items():
            np.take(v, idx, axis=0, out=out[k])
        masks = out["_masks"]
        np.logical_and(self.mask_matrix[idx], inside[..., None], out=masks[..., :-1])
        masks[..., -1] = inside
        out["_index"][:, :window] = self.timestep[idx]
        return ep


class _Layout:
    """Where each part of a batch lies in its one transport buffer (64-byte aligned byte ranges).

    A worker sends a batch as a single uint8 tensor: every tensor that crosses a process
    boundary costs a shared-memory segment, and one segment instead of a dozen makes the
    hand-over about a quarter faster (measured, 2026-11-26).
    """

    def __init__(self, features: dict[str, Feature], batch_size: int, window: int) -> None:
        parts = [(k, (batch_size, window, *f.shape), np.dtype(f.dtype)) for k, f in features.items()]
        parts += [("_masks", (batch_size, window, len(features) + 1), np.dtype(bool)), ("_index", (batch_size, window + 2), np.dtype(np.int64))]
        self.parts: list[tuple[str, tuple[int, ...], np.dtype, int, int]] = []
        offset = 0
        for name, shape, dtype in parts:
            offset = -(-offset // 64) * 64
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            self.parts.append((name, shape, dtype, offset, nbytes))
            offset += nbytes
        self.nbytes = offset

    def numpy_views(self, buf: np.ndarray) -> dict[str, np.ndarray]:
        return {name: buf[o : o + n].view(dt).reshape(shape) for name, shape, dt, o, n in self.parts}

    def torch_views(self, buf: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: buf[o : o + n].view(_TORCH_DTYPES[dt.str]).view(shape) for name, shape, dt, o, n in self.parts}


_TORCH_DTYPES = {
    np.dtype(d).str: t
    for d, t in [("float16", torch.float16), ("float32", torch.float32), ("float64", torch.float64), ("uint8", torch.uint8),
                 ("int8", torch.int8), ("int16", torch.int16), ("int32", torch.int32), ("int64", torch.int64), ("bool", torch.bool)]
}


def _named(data: dict[str, torch.Tensor], features: dict[str, Feature], masks: torch.Tensor, inside: torch.Tensor,
           timestep: torch.Tensor, episode: torch.Tensor, instruction: torch.Tensor) -> dict[str, torch.Tensor]:
    """The documented batch: features, ``<feature>_mask`` from the (B, T, F) masks, ``mask``, ``timestep``, ``episode``, ``instruction``."""
    batch = dict(data)
    for j, key in enumerate(features):
        batch[f"{key}_mask"] = masks[..., j]
    batch.update({"mask": inside, "timestep": timestep, "episode": episode, specs.INSTRUCTION: instruction})
    return batch


def _held_out(url: str, uid: int, fraction: float) -> bool:
    """Whether an episode is in the held-out part: a stable hash of the store's name and the uid."""
    import hashlib

    h = hashlib.sha256(f"{os.path.basename(url.rstrip('/'))}/{uid}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < fraction


class WindowSampler(torch.utils.data.IterableDataset):
    """An endless stream of window batches over the valid episodes of one or more stores.

    Iterate it through :func:`make_loader` (``batch(k)`` gives one batch directly). Iterating
    the sampler itself yields the transport form, one uint8 tensor a batch that worker
    processes write in shared memory; the loader unpacks it into the documented dict (views,
    no copies). Each worker opens its own read handles.
    """

    def __init__(self, urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], config: SamplerConfig = SamplerConfig(), start_batch: int = 0) -> None:
        super().__init__()
        self.urls = [str(urls)] if isinstance(urls, (str, os.PathLike)) else [str(u) for u in urls]
        if not self.urls:
            raise StoreError("the sampler needs at least one store")
        self.config = config
        self.start_batch = int(start_batch)
        stores = [EpisodeStore.open(u) for u in self.urls]
        self.features: dict[str, Feature] = {}
        for s in stores:
            for k, f in s.features.items():
                if k in self.features and self.features[k] != f:
                    raise StoreError(f"feature {k!r} differs between stores ({self.features[k]} vs {f} in {s.url}); convert one of them")
                self.features.setdefault(k, f)
        if config.keys is not None:
            missing = sorted(set(config.keys) - set(self.features))
            if missing:
                raise StoreError(f"no store has feature(s) {missing}; they have {sorted(self.features)}")
            self.features = {k: self.features[k] for k in config.keys}
        self.episodes: list[tuple[int, int]] = []
        """(store number, episode index) of every sampled episode."""
        self.policies: list[str] = []
        """Who recorded each sampled episode (its ``policy`` metadata: expert, noisy:0.5, random, ...; "" if unknown)."""
        lengths, instr = [], []
        for si, s in enumerate(stores):
            for i, m in enumerate(s.metas()):
                if config.valid_only and not m.get(specs.VALID, True):
                    continue
                if config.holdout > 0 and _held_out(s.url, int(s.record(i)["uid"]), config.holdout) != (config.part == "heldout"):
                    continue
                self.episodes.append((si, i))
                self.policies.append(str(m.get("policy", "")))
                lengths.append(int(m["length"]))
                instr.append(str(m.get(specs.INSTRUCTION, "")))
        if not self.episodes:
            raise StoreError(f"no valid episodes in {', '.join(self.urls)}")
        self.instructions: list[str] = sorted(set(instr))
        """Distinct instructions; batches give indices into this list."""
        lookup = {s: j for j, s in enumerate(self.instructions)}
        self._instruction = np.array([lookup[s] for s in instr], dtype=np.int64)
        self.lengths = np.array(lengths, dtype=np.int64)
        self.frame_bytes = sum(int(np.prod(f.shape, dtype=np.int64)) * np.dtype(f.dtype).itemsize + 1 for f in self.features.values())
        self._layout = _Layout(self.features, config.batch_size, config.window)
        self.in_ram = config.in_ram if config.in_ram is not None else self.ram_bytes <= config.ram_budget_gb * 2**30
        self._stores: list[EpisodeStore] | None = stores
        self._ram: _Frames | None = self._decode(range(len(self.episodes))) if self.in_ram else None
        self._stores = None  # zarr handles are re-opened in each worker process

    @property
    def ram_bytes(self) -> int:
        """Bytes of the decoded copy of every sampled episode."""
        return int(self.lengths.sum()) * self.frame_bytes

    # ------------------------------------------------------------------ decoding
    def _open(self) -> list[EpisodeStore]:
        if self._stores is None:
            self._stores = [EpisodeStore.open(u) for u in self.urls]
        return self._stores

    def _decode(self, which: Sequence[int] | range) -> _Frames:
        stores = self._open()
        parts = []
        for e in which:
            si, i = self.episodes[e]
            s = stores[si]
            keys = [k for k in self.features if k in s.features]
            ep = s.episode(i, keys=keys)
            n = int(self.lengths[e])
            for k, f in self.features.items():
                if k not in ep:  # a feature this store lacks: masked
                    ep[k] = np.full((n, *f.shape), f.fill_value, dtype=f.dtype)
                if f"{k}_mask" not in ep:
                    present = int(s.record(i)["present"].get(k, 0))
                    mask = np.zeros(n, dtype=bool)
                    mask[:present] = True
                    ep[f"{k}_mask"] = mask
            ep["__frames__"] = np.empty(n, dtype=np.uint8)
            parts.append(ep)
        return _Frames(parts, self.features, self.config.window, self.config.cover_edges)

    # ------------------------------------------------------------------ batches
    def _block(self, block: int) -> tuple[np.ndarray, _Frames]:
        """The episodes of an out-of-core block, drawn with probability proportional to their windows."""
        c = self.config
        weights = window_slots(self.lengths, c.window, c.cover_edges).astype(np.float64)
        rng = np.random.default_rng([c.seed, 1, block])
        k = min(c.episodes_per_block, len(self.episodes))
        chosen = np.sort(rng.choice(len(self.episodes), size=k, replace=False, p=weights / weights.sum()))
        return chosen, self._decode(chosen.tolist())

    def packed(self, k: int, _cache: dict[str, Any] | None = None) -> torch.Tensor:
        """Batch ``k`` in transport form: one uint8 tensor (see :class:`_Layout`); :meth:`unpack` reads it."""
        c = self.config
        rng = np.random.default_rng([c.seed, 0, k])
        if self._ram is not None:
            chosen, frames = None, self._ram
        else:
            cache = _cache if _cache is not None else {}
            block = k // c.batches_per_block
            if cache.get("block") != block:
                cache["block"], cache["data"] = block, self._block(block)
            chosen, frames = cache["data"]
        if torch.utils.data.get_worker_info() is not None:  # in a worker: write straight into shared memory
            buf_t = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(self._layout.nbytes))
        else:
            buf_t = torch.empty(self._layout.nbytes, dtype=torch.uint8)
        buf = buf_t.numpy()
        out = self._layout.numpy_views(buf)
        ep = frames.gather(rng, c.batch_size, c.window, out, c.shard)
        if chosen is not None:
            ep = chosen[ep]
        out["_index"][:, -2] = ep
        out["_index"][:, -1] = self._instruction[ep]
        return buf_t

    def unpack(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        """The documented batch from its transport form (views, no copies)."""
        parts = self._layout.torch_views(packed)
        masks, index = parts.pop("_masks"), parts.pop("_index")
        return _named(parts, self.features, masks[..., :-1], masks[..., -1], index[:, :-2], index[:, -2], index[:, -1])

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        """Batch number ``k`` (the same whichever process computes it)."""
        return self.unpack(self.packed(k))

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Packed batches (see :meth:`packed`) from ``start_batch`` on; this worker's share of them."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        cache: dict[str, Any] = {}
        k = self.start_batch + worker
        while True:
            yield self.packed(k, cache)
            k += workers

    @property
    def batches_per_pass(self) -> int:
        """Batches that hold as many windows as there are window starts (the stream itself is endless)."""
        return int(math.ceil(window_slots(self.lengths, self.config.window, self.config.cover_edges).sum() / self.config.batch_size))


class DeviceWindows:
    """The batches of an in-RAM :class:`WindowSampler`, gathered on a device from a copy of the frames kept there.

    When the decoded data fits in accelerator memory (26k frames of 64x64 pixels are 0.3 GB),
    this removes the host from the loop: no workers, no shared memory, no host-to-device
    copies; each batch is a few indexing kernels. Batch ``k`` equals ``sampler.batch(k)``.
    """

    def __init__(self, sampler: WindowSampler, device: str | torch.device) -> None:
        if sampler._ram is None:
            raise StoreError("device-resident batches need the in-RAM copy (SamplerConfig(in_ram=True) and enough memory)")
        self.sampler, self.device = sampler, torch.device(device)
        frames = sampler._ram
        self.frames = frames
        self.data = {k: torch.from_numpy(v).to(self.device) for k, v in frames.data.items()}
        self.masks = torch.from_numpy(frames.mask_matrix).to(self.device)
        self.timestep = torch.from_numpy(frames.timestep).to(self.device)
        self.instruction = torch.from_numpy(sampler._instruction).to(self.device)
        self.start_batch = sampler.start_batch

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.data.values(), self.masks, self.timestep])

    def batch(self, k: int) -> dict[str, torch.Tensor]:
        c = self.sampler.config
        idx_np, inside_np, ep_np = self.frames.draw(np.random.default_rng([c.seed, 0, k]), c.batch_size, c.window, c.shard)
        idx = torch.from_numpy(idx_np).to(self.device, non_blocking=True)
        inside = torch.from_numpy(inside_np).to(self.device, non_blocking=True)
        ep = torch.from_numpy(ep_np.astype(np.int64)).to(self.device, non_blocking=True)
        data = {k: v[idx] for k, v in self.data.items()}
        masks = self.masks[idx] & inside[..., None]
        return _named(data, self.sampler.features, masks, inside, self.timestep[idx], ep, self.instruction[ep])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        k = self.start_batch
        while True:
            yield self.batch(k)
            k += 1


class WindowLoader:
    """Iterates batches of a :class:`WindowSampler` through a DataLoader with worker processes.

    Batch ``start_batch + n`` is the ``n``-th item; workers send the packed form and this
    loader unpacks it in the main process.
    """

    def __init__(self, sampler: WindowSampler, num_workers: int = 2, pin_memory: bool = False, prefetch_factor: int = 4) -> None:
        kwargs: dict[str, Any] = {}
        if num_workers > 0:
            kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=True)
        self.sampler = sampler
        self.loader = torch.utils.data.DataLoader(sampler, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for packed in self.loader:
            yield self.sampler.unpack(packed)


def make_loader(sampler: WindowSampler, num_workers: int = 2, pin_memory: bool = False, prefetch_factor: int = 4) -> WindowLoader:
    """Batches of ``sampler`` from ``num_workers`` worker processes (``pin_memory`` for CUDA copies)."""
    return WindowLoader(sampler, num_workers, pin_memory, prefetch_factor)
