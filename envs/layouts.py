"""Layouts: where objects, goal zones and hazards start. Registered by name.

``scatter`` (training) draws every position in an annulus around the table centre;
``rows`` (held out) lines the objects up near the bottom edge and the zones near the top.
Every draw is checked for feasibility (see :func:`feasible`) and redrawn if it fails, so a
scripted expert can always finish the task: the pushed object's path stays clear of the
other objects and of the arms' singular centre, and the push start point is reachable.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from embodied.specs import N_HAZARDS, N_OBJECTS, N_ZONES

from embodied.registry import Registry
from .scene import HALF_EXTENT, HAZARD_RADIUS, ZONE_RADIUS

Sampler = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]
LAYOUTS: Registry[Sampler] = Registry("layout")
register_layout = LAYOUTS.register
"""Decorator: ``@register_layout("name")`` adds a sampler ``rng -> (objects (N,2), zones (M,2))``."""

R_MIN, R_MAX = 0.12, 0.28
"""Annulus (m) in which objects and zones are placed."""


def _annulus(rng: np.random.Generator, lo: float = R_MIN, hi: float = R_MAX) -> np.ndarray:
    r = np.sqrt(rng.uniform(lo * lo, hi * hi))
    th = rng.uniform(-np.pi, np.pi)
    return np.array([r * np.cos(th), r * np.sin(th)])


def _spread(rng: np.random.Generator, n: int, min_gap: float, draw: Callable[[], np.ndarray]) -> np.ndarray:
    pts: list[np.ndarray] = []
    while len(pts) < n:
        p = draw()
        if all(np.linalg.norm(p - q) >= min_gap for q in pts):
            pts.append(p)
    return np.array(pts)


@register_layout("scatter")
def scatter(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Objects and zones anywhere in the annulus, objects 10 cm and zones 14 cm apart."""
    objs = _spread(rng, N_OBJECTS, 0.10, lambda: _annulus(rng))
    zones = _spread(rng, N_ZONES, 0.14, lambda: _annulus(rng, 0.10, 0.30))
    return objs, zones


@register_layout("rows")
def rows(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Objects in a row near the bottom edge, zones in a row near the top (held-out layout)."""
    xs = np.array([-0.16, 0.0, 0.16])
    objs = np.stack([rng.permutation(xs) + rng.uniform(-0.015, 0.015, 3), np.full(3, -0.22) + rng.uniform(-0.02, 0.02, 3)], 1)
    zones = np.stack([rng.permutation(xs) + rng.uniform(-0.015, 0.015, 3), np.full(3, 0.22) + rng.uniform(-0.02, 0.02, 3)], 1)
    return objs, zones


def segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance (m) from point ``p`` to the segment ``a``-``b``."""
    ab = b - a
    t = float(np.clip((p - a) @ ab / max(float(ab @ ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def feasible(
    path: tuple[np.ndarray, np.ndarray],
    target: int,
    objs: np.ndarray,
    zones: np.ndarray,
    ee: np.ndarray,
    pushing: bool,
    goal_zone: int,
) -> bool:
    """Whether a draw leaves the task cleanly solvable by a scripted expert."""
    a, b = path
    limit = HALF_EXTENT - 0.06
    if np.any(np.abs(b) > limit) or np.linalg.norm(b) > 0.32:
        return False
    if any(np.linalg.norm(o - ee) < 0.08 for o in objs):
        return False
    others = [o for i, o in enumerate(objs) if i != target]
    if any(segment_distance(o, a, b) < 0.085 for o in others):
        return False
    if pushing:
        u = (b - a) / max(float(np.linalg.norm(b - a)), 1e-9)
        start = a - 0.07 * u  # where the fingertip lines up
        if np.any(np.abs(start) > limit) or np.linalg.norm(start) > 0.34:
            return False
        if segment_distance(np.zeros(2), a, b) < 0.11 or np.linalg.norm(b - a) < 0.1:
            return False
        if goal_zone >= 0 and any(np.linalg.norm(o - zones[goal_zone]) < ZONE_RADIUS + 0.05 for o in others):
            return False
    return True


def place_hazards(rng: np.random.Generator, n: int, avoid: list[np.ndarray]) -> np.ndarray:
    """``n`` hazard centres (N_HAZARDS, 2), clear of ``avoid`` points; unused slots parked off-table."""
    out = np.full((N_HAZARDS, 2), 5.0)
    pts: list[np.ndarray] = []
    for _ in range(1000):
        if len(pts) == n:
            break
        p = _annulus(rng, 0.08, 0.30)
        if all(np.linalg.norm(p - q) >= HAZARD_RADIUS + 0.06 for q in avoid + pts):
            pts.append(p)
    if pts:
        out[: len(pts)] = pts
    return out
