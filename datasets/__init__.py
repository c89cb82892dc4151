"""Episode stores (Zarr v3), the window sampler, video import/export and dataset tools.

``from embodied.datasets import EpisodeStore, WindowSampler`` works; the sampler (and with
it torch) is imported on first use only.
"""

from __future__ import annotations

from typing import Any

from .store import CorruptEpisodeError, EpisodeStore, Feature, StoreError, StoreLockedError, default_features

__all__ = [
    "CorruptEpisodeError",
    "EpisodeStore",
    "Feature",
    "SamplerConfig",
    "StoreError",
    "StoreLockedError",
    "WindowSampler",
    "default_features",
    "make_loader",
]


def __getattr__(name: str) -> Any:
    if name in ("SamplerConfig", "WindowSampler", "make_loader"):
        from . import sampler

        return getattr(sampler, name)
    raise AttributeError(f"module 'embodied.datasets' has no attribute {name!r}")
