"""Per-dimension running statistics (count, mean, variance, min, max) that merge exactly.

Stores keep one :class:`RunningStats` per float feature and merge each new episode into it
(Chan et al.'s parallel update), so normalization statistics stay current without a pass
over the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class RunningStats:
    """Statistics over the leading axis of arrays of shape ``(N, *shape)``."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> "RunningStats":
        return cls(0, np.zeros(shape), np.zeros(shape), np.full(shape, np.inf), np.full(shape, -np.inf))

    @classmethod
    def of(cls, x: np.ndarray) -> "RunningStats":
        """Statistics of the finite rows of ``x`` (rows with NaN or inf are left out)."""
        x = np.asarray(x, dtype=np.float64)
        x = x[np.isfinite(x.reshape(len(x), -1)).all(axis=1)] if len(x) else x
        if not len(x):
            return cls.empty(x.shape[1:])
        mean = x.mean(axis=0)
        return cls(len(x), mean, ((x - mean) ** 2).sum(axis=0), x.min(axis=0), x.max(axis=0))

    def merge(self, other: "RunningStats") -> "RunningStats":
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return RunningStats(n, mean, m2, np.minimum(self.min, other.min), np.maximum(self.max, other.max))

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
            "std": self.std.tolist(),
            "min": self.min.tolist() if self.count else None,
            "max": self.max.tolist() if self.count else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], shape: tuple[int, ...]) -> "RunningStats":
        if not d["count"]:
            return cls.empty(shape)
        return cls(int(d["count"]), np.asarray(d["mean"]), np.asarray(d["m2"]), np.asarray(d["min"]), np.asarray(d["max"]))
