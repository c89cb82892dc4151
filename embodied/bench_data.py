"""Speed of the data layer: appends, compression and windows per second (``embodied bench data``).

:func:`bench_data` works on a store of rendered 64x64 frames plus state (made with
``embodied collect`` on first use: a noisy expert on PointPushZone and Arm2PushDir,
at least ``frames`` frames) and reports:

* ``append_frames_per_s``: frames per second of :meth:`EpisodeStore.add_episode` writing
  those episodes (already in memory) into a fresh local store: compression, chunk files
  and commit records included;
* ``bytes_per_frame``: stored bytes of all features per frame; ``compression_ratio``:
  raw uint8 pixel bytes over stored pixel bytes (lossless); ``total_compression_ratio``:
  the same over every feature;
* windows per second (``window`` frames, ``batch`` windows a batch, a torch DataLoader
  with ``loader_workers`` worker processes, every feature of the store loaded):
  ``sampler_windows_per_s`` (:class:`~embodied.datasets.sampler.WindowSampler`, in RAM
  since the data fits), ``sampler_ooc_windows_per_s`` (the same with the in-RAM copy off:
  out of core, decoding whole episodes in blocks), ``naive_windows_per_s`` (a map-style
  dataset reading each window with its own Zarr slice per feature, the usual first
  attempt) and ``inram_windows_per_s`` (the data decoded into NumPy arrays beforehand, a
  batch one fancy-indexing gather: the ceiling);
* ``sampler_vs_naive``, ``sampler_ooc_vs_naive``, ``sampler_vs_inram``: ratios of those.

Rates are medians over ``repeats`` timed windows after a warm-up (workers started, first
blocks decoded); all rates of one call are measured in the same process, one after another.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

BENCH_ENVS = ("embodied/PointPushZone-v0", "embodied/Arm2PushDir-v0")


def ensure_dataset(path: str | Path, frames: int = 20_000, workers: int = 2, progress: Callable[[str], None] | None = None) -> str:
    """A store of at least ``frames`` rendered 64x64 frames at ``path`` (collected when missing or short)."""
    from embodied.collect import CollectSpec, collect
    from embodied.datasets.files import StoreFiles
    from embodied.datasets.store import EpisodeStore

    path = str(path)
    have = 0
    if StoreFiles(path).exists("zarr.json"):
        with EpisodeStore.open(path) as s:
            have = s.num_frames
    while have < frames:
        episodes = max(8, int((frames - have) / 60) + 1)  # a noisy expert averages ~70 frames an episode
        if progress:
            progress(f"collecting {episodes} episodes into {path} ({have} of {frames} frames so far)")
        collect(
            CollectSpec(out=path, env_ids=BENCH_ENVS, episodes=episodes, policy="noisy:0.5", pixels=64, workers=workers,
                        append=have > 0, source="bench", command="embodied bench data"),
            progress=progress is not None,
        )
        with EpisodeStore.open(path) as s:
            have = s.num_frames
    return path


def _median_rate(step: Callable[[], int], repeats: int, min_seconds: float) -> float:
    """Median over ``repeats`` windows of (units returned by ``step``) per second; each window runs >= min_seconds."""
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            n += step()
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
        rates.append(n / dt)
    return statistics.median(rates)


def _loader_rate(loader: Any, repeats: int, seconds: float, warmup: int = 3, device: str | None = None) -> float:
    """Windows per second out of ``loader``; with ``device``, each batch is also copied there (and waited for)."""
    it: Iterator[Any] = iter(loader)

    def step() -> int:
        b = next(it)
        if device is not None:
            b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        return int(next(iter(b.values())).shape[0])

    for _ in range(warmup):
        step()

    return _median_rate(step, repeats, seconds)  # the iterator (and its workers) goes when this returns


class _NaiveWindows(torch.utils.data.Dataset):
    """Map-style dataset: window ``i`` is read with one Zarr slice per feature (opened lazily per worker)."""

    def __init__(self, url: str, window: int) -> None:
        from embodied.datasets.store import EpisodeStore

        with EpisodeStore.open(url) as s:
            self.keys = list(s.features)
            starts = []
            for i in range(len(s)):
                r = s.record(i)
                for t in range(max(int(r["length"]) - window + 1, 1)):
                    starts.append(int(r["start"]) + t)
        self.starts = np.array(starts)
        self.url, self.window = url, window
        self._arrays: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from embodied.datasets.store import EpisodeStore

        if self._arrays is None:
            s = EpisodeStore.open(self.url)
            self._arrays = {k: s.array(k) for k in self.keys}
        s0 = int(self.starts[i])
        return {k: torch.from_numpy(a[s0 : s0 + self.window]) for k, a in self._arrays.items()}


class _InRamWindows(torch.utils.data.IterableDataset):
    """Batches gathered by fancy indexing from NumPy copies of every feature (the ceiling)."""

    def __init__(self, url: str, window: int, batch: int) -> None:
        from embodied.datasets.store import EpisodeStore

        with EpisodeStore.open(url) as s:
            eps = [s.episode(i) for i in range(len(s))]
            self.data = {k: np.concatenate([e[k] for e in eps]) for k in s.features}
            lengths = np.array([len(e[next(iter(s.features))]) for e in eps])
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.starts = np.concatenate([o + np.arange(max(n - window + 1, 1)) for o, n in zip(offsets, lengths)])
        self.window, self.batch = window, batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng()
        while True:
            idx = self.starts[rng.integers(0, len(self.starts), self.batch)][:, None] + np.arange(self.window)
            yield {k: torch.from_numpy(v[idx]) for k, v in self.data.items()}


def bench_data(
    data: str | Path = "out/bench/data.zarr",
    frames: int = 20_000,
    window: int = 8,
    batch: int = 256,
    loader_workers: int = 2,
    seconds: float = 2.0,
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
    device: str | None = None,
    collect_workers: int = 2,
) -> dict[str, Any]:
    """Run the data-layer benchmark (see the module docstring); returns the JSON-able results.

    With ``device`` (e.g. ``"cuda"``) every loader's batches are also copied to that device
    (pinned memory, non-blocking, synchronised) inside the timed loop: windows delivered to
    the accelerator, not just to the host.
    """
    from embodied.datasets.sampler import SamplerConfig, WindowSampler, make_loader
    from embodied.datasets.store import EpisodeStore

    log = progress or (lambda s: None)
    url = ensure_dataset(data, frames, workers=collect_workers, progress=progress)
    with EpisodeStore.open(url) as s:
        n_frames, n_eps = s.num_frames, len(s)
        episodes = []
        for i in range(len(s)):
            ep, rec = s.episode(i), s.record(i)
            episodes.append(({k: ep[k][: int(n)] for k, n in rec["present"].items()}, rec["meta"]))
        features = s.features
        files = s.files.walk("data")
        pixel_bytes = sum(v for k, v in files.items() if k.startswith("data/pixels/c/"))
        stored = sum(v for k, v in files.items() if "/c/" in k)
        raw_total = sum(n_frames * int(np.prod(f.shape, dtype=np.int64)) * np.dtype(f.dtype).itemsize for f in features.values())
    out: dict[str, Any] = {"frames": n_frames, "episodes": n_eps, "window": window, "batch": batch, "loader_workers": loader_workers, "device": device or "host"}
    pin = device is not None and device.startswith("cuda")

    log(f"append: writing {n_frames} frames ({n_eps} episodes) into fresh stores")
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            t0 = time.perf_counter()
            with EpisodeStore.create(f"{tmp}/append{r}.zarr", features) as w:
                for steps, meta in episodes:
                    w.add_episode(steps, meta)
            rates.append(n_frames / (time.perf_counter() - t0))
    out["append_frames_per_s"] = statistics.median(rates)
    out["bytes_per_frame"] = stored / n_frames
    out["pixel_bytes_per_frame"] = pixel_bytes / n_frames
    out["compression_ratio"] = n_frames * 64 * 64 * 3 / pixel_bytes
    out["total_compression_ratio"] = raw_total / stored
    del episodes

    torch.set_num_threads(1)
    cfg = SamplerConfig(window=window, batch_size=batch)
    log("windows/s: our sampler (in RAM)")
    sampler = WindowSampler(url, cfg)
    out["sampler_in_ram"] = sampler.in_ram
    out["sampler_windows_per_s"] = _loader_rate(make_loader(sampler, loader_workers, pin_memory=pin), repeats, seconds, device=device)
    del sampler
    log("windows/s: our sampler, out of core")
    ooc = WindowSampler(url, SamplerConfig(window=window, batch_size=batch, in_ram=False))
    out["sampler_ooc_windows_per_s"] = _loader_rate(make_loader(ooc, loader_workers, pin_memory=pin), repeats, seconds, device=device)
    del ooc
    log("windows/s: naive per-window Zarr reads")
    naive = torch.utils.data.DataLoader(_NaiveWindows(url, window), batch_size=batch, shuffle=True, num_workers=loader_workers, persistent_workers=True, pin_memory=pin)
    out["naive_windows_per_s"] = _loader_rate(naive, repeats, seconds, warmup=1, device=device)
    del naive
    log("windows/s: in-RAM NumPy indexing")
    inram = torch.utils.data.DataLoader(_InRamWindows(url, window, batch), batch_size=None, num_workers=loader_workers, persistent_workers=True, pin_memory=pin)
    out["inram_windows_per_s"] = _loader_rate(inram, repeats, seconds, device=device)
    del inram
    out["sampler_vs_naive"] = out["sampler_windows_per_s"] / out["naive_windows_per_s"]
    out["sampler_ooc_vs_naive"] = out["sampler_ooc_windows_per_s"] / out["naive_windows_per_s"]
    out["sampler_vs_inram"] = out["sampler_windows_per_s"] / out["inram_windows_per_s"]
    return out


TARGETS = {
    "compression_ratio": 8.0,
    "sampler_vs_naive": 20.0,
    "sampler_vs_inram": 0.5,
    "sampler_ooc_vs_naive": 10.0,
}
"""Issue 3's targets: each ratio must be at least this."""


def missed_targets(result: dict[str, Any]) -> list[str]:
    return [f"{k}={result[k]:.2f} (target >= {v})" for k, v in TARGETS.items() if result[k] < v]


def format_result(r: dict[str, Any]) -> str:
    lines = [
        f"dataset: {r['frames']} frames of 64x64 pixels + state in {r['episodes']} episodes; window {r['window']}, batch {r['batch']}, "
        f"{r['loader_workers']} DataLoader workers, windows delivered to {r['device']}",
        f"append                 {r['append_frames_per_s']:>12,.0f} frames/s",
        f"stored                 {r['bytes_per_frame']:>12,.0f} bytes/frame (pixels {r['pixel_bytes_per_frame']:,.0f})",
        f"pixel compression      {r['compression_ratio']:>12.1f}x lossless (all features {r['total_compression_ratio']:.1f}x)",
        f"sampler (in RAM)       {r['sampler_windows_per_s']:>12,.0f} windows/s",
        f"sampler (out of core)  {r['sampler_ooc_windows_per_s']:>12,.0f} windows/s",
        f"naive Zarr per window  {r['naive_windows_per_s']:>12,.0f} windows/s",
        f"in-RAM NumPy indexing  {r['inram_windows_per_s']:>12,.0f} windows/s",
        f"sampler / naive {r['sampler_vs_naive']:.1f}x, out-of-core / naive {r['sampler_ooc_vs_naive']:.1f}x, sampler / in-RAM {r['sampler_vs_inram']:.2f}x",
    ]
    return "\n".join(lines)
