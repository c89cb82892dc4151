"""Task families, registered by name with :func:`register_family`.

A family decides what an episode asks for (the target object, a zone or a direction), how
to fill the instruction, the reward terms, success, and a scripted expert's velocity. Every
family reports the same reward keys (``reward_reach``, ``reward_goal``, ``reward_success``,
``reward_ctrl``) so datasets of different families share one schema.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .embodiments import TIP_RADIUS
from .instructions import DIRECTIONS
from embodied.registry import Registry
from .scene import OBJECT_HALF, ZONE_RADIUS

FAMILY_REGISTRY: Registry[type["TaskFamily"]] = Registry("task family")
register_family = FAMILY_REGISTRY.register
"""Class decorator: ``@register_family("name")`` adds a :class:`TaskFamily` subclass."""

PUSH_DISTANCE = 0.12
"""How far (m) push_dir's expert aims to move the object; success needs SUCCESS_DISTANCE."""
SUCCESS_DISTANCE = 0.10
LATERAL_TOLERANCE = 0.05
"""push_dir: largest sideways drift (m) that still counts as moving in the asked direction."""
ZONE_SUCCESS = ZONE_RADIUS - 0.015
"""push_zone: the object's centre must be this close (m) to the zone's centre."""
TOUCH = 0.004
"""reach: fingertip-to-surface gap (m) that counts as touching."""


@dataclass
class Goal:
    """What one episode asks for, in table coordinates (m)."""

    target: int
    """Object slot to act on."""
    point: np.ndarray
    """(2,) where the target should end up (push families); the target's start for reach."""
    zone: int = -1
    """Target goal-zone slot (push_zone), else -1."""
    direction: str = ""
    """Direction word (push_dir), else ""."""


def surface_gap(tip: np.ndarray, obj: np.ndarray, yaw: float, shape: str) -> float:
    """Distance (m) between the fingertip sphere's surface and the object's outline in the plane."""
    dx, dy = float(tip[0] - obj[0]), float(tip[1] - obj[1])  # plain floats: this runs every step
    if shape == "cube":
        c, s = math.cos(yaw), math.sin(yaw)
        lx, ly = abs(c * dx + s * dy) - OBJECT_HALF, abs(-s * dx + c * dy) - OBJECT_HALF
        return math.hypot(max(lx, 0.0), max(ly, 0.0)) + min(max(lx, ly), 0.0) - TIP_RADIUS
    return math.hypot(dx, dy) - OBJECT_HALF - TIP_RADIUS


class TaskFamily(ABC):
    """One kind of task: sampling its goal, scoring a state, and an expert for it."""

    name: ClassVar[str]
    pushes: ClassVar[bool] = True
    """Whether the task moves the target (its path is then checked for a clear push)."""
    max_steps: ClassVar[int]
    """Default episode length (control steps at 20 Hz)."""

    @abstractmethod
    def choose_goal(self, rng: np.random.Generator, target: int, obj_pos: np.ndarray, zone_pos: np.ndarray) -> Goal:
        """Pick the goal for ``target`` given object (N, 2) and zone (M, 2) start positions."""

    def path(self, goal: Goal, obj_pos: np.ndarray, ee: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The segment the target travels (push) or the fingertip travels (reach)."""
        return obj_pos[goal.target], goal.point

    @abstractmethod
    def progress(self, goal: Goal, obj_pos: np.ndarray, obj_start: np.ndarray, gap: float) -> tuple[float, bool]:
        """(distance of the target to its goal in m, success); ``gap`` is the fingertip-to-target gap (m)."""

    def expert_velocity(self, goal: Goal, ee: np.ndarray, obj: np.ndarray, speed: float) -> np.ndarray:
        """Fingertip velocity (2,) in m/s that a scripted expert commands now."""
        return push_velocity(ee, obj, goal.point, speed)


@register_family("reach")
class Reach(TaskFamily):
    """Touch the named object with the fingertip."""

    pushes = False
    max_steps = 60

    def choose_goal(self, rng, target, obj_pos, zone_pos):
        return Goal(target=target, point=obj_pos[target].copy())

    def path(self, goal, obj_pos, ee):
        return ee, obj_pos[goal.target]

    def progress(self, goal, obj_pos, obj_start, gap):
        return 0.0, gap <= TOUCH

    def expert_velocity(self, goal, ee, obj, speed):
        v = (obj - ee) * 8.0
        n = np.linalg.norm(v)
        return v * (speed / n) if n > speed else v


@register_family("push_zone")
class PushToZone(TaskFamily):
    """Push the named object into the goal zone of the named colour."""

    max_steps = 150

    def choose_goal(self, rng, target, obj_pos, zone_pos):
        z = int(rng.integers(len(zone_pos)))
        return Goal(target=target, point=zone_pos[z].copy(), zone=z)

    def progress(self, goal, obj_pos, obj_start, gap):
        p = obj_pos[goal.target]
        d = math.hypot(float(p[0] - goal.point[0]), float(p[1] - goal.point[1]))
        return d, d <= ZONE_SUCCESS


@register_family("push_dir")
class PushInDirection(TaskFamily):
    """Push the named object in a direction (left, right, top, bottom) by at least 10 cm."""

    max_steps = 100

    def choose_goal(self, rng, target, obj_pos, zone_pos):
        names = list(DIRECTIONS)
        word = names[int(rng.integers(len(names)))]
        point = obj_pos[target] + PUSH_DISTANCE * np.asarray(DIRECTIONS[word])
        return Goal(target=target, point=point, direction=word)

    def progress(self, goal, obj_pos, obj_start, gap):
        u = np.asarray(DIRECTIONS[goal.direction])
        disp = obj_pos[goal.target] - obj_start[goal.target]
        along = float(disp @ u)
        lateral = abs(float(disp[0] * u[1] - disp[1] * u[0]))
        return float(np.linalg.norm(obj_pos[goal.target] - goal.point)), along >= SUCCESS_DISTANCE and lateral <= LATERAL_TOLERANCE


STANDOFF = OBJECT_HALF + TIP_RADIUS + 0.018
"""Distance (m) behind the object's centre where the fingertip lines up before pushing."""


def push_velocity(ee: np.ndarray, obj: np.ndarray, goal: np.ndarray, speed: float) -> np.ndarray:
    """A closed-loop pushing controller: line up behind the object, then push it to ``goal``.

    Returns the fingertip velocity in m/s (norm at most ``speed``). The fingertip goes around
    the object when it starts on the wrong side, and corrects sideways drift while pushing.
    """
    d = goal - obj
    dist = float(np.hypot(d[0], d[1]))
    u = d / dist if dist > 1e-9 else np.array([1.0, 0.0])
    rel = ee - obj
    along = float(rel @ u)
    perp = rel - along * u
    lat = float(np.hypot(perp[0], perp[1]))
    if along < -0.02 and lat < 0.022:  # behind the object and roughly lined up: push, steering back onto the line
        push = min(0.6 * speed, 4.0 * dist + 0.02) * (1.0 - lat / 0.03)
        v = u * push - perp * 10.0
    else:
        side = perp / lat if lat > 1e-6 else np.array([-u[1], u[0]])
        if along < -0.02:  # behind but off the line: back off to the line-up point
            target = obj - u * STANDOFF
        elif float(np.hypot(rel[0], rel[1])) < STANDOFF + 0.035:  # beside or in front, close: step around
            target = obj + side * (STANDOFF + 0.03) - u * 0.5 * STANDOFF
        else:
            target = obj + side * (STANDOFF + 0.02) - u * STANDOFF
        v = (target - ee) * 10.0
    n = float(np.hypot(v[0], v[1]))
    return v * (speed / n) if n > speed else v


def make_family(name: str) -> TaskFamily:
    """A fresh instance of the task family registered as ``name``."""
    return FAMILY_REGISTRY[name]()
