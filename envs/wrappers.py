"""Wrappers around the suite's envs."""

from __future__ import annotations

import functools
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from embodied.specs import (
    HAZARD_FEATURES, INSTRUCTION, INSTRUCTION_BYTES, N_HAZARDS, N_OBJECTS, N_ZONES, OBJECT_FEATURES, SHAPES, STATE, ZONE_FEATURES,
    encode_instruction, state_slices,
)

from .instructions import COLOURS, Task

_SL = state_slices()


class InstructionAsBytes(gym.ObservationWrapper):
    """Replace the ``instruction`` string by its UTF-8 bytes, a (INSTRUCTION_BYTES,) uint8 Box.

    stable-baselines3's vectorised envs (and so ``evaluate_policy``) hold observations as
    arrays; a ``Text`` space has no shape. Policies read the string back with
    :func:`embodied.specs.decode_instruction`.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        spaces = dict(env.observation_space.spaces)  # type: ignore[attr-defined]
        spaces[INSTRUCTION] = gym.spaces.Box(0, 255, (INSTRUCTION_BYTES,), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, INSTRUCTION: encode_instruction(observation[INSTRUCTION])}


class FixedTask(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Every episode asks for the task of one plain-language instruction.

    Each ``reset`` sets the scene up to contain what ``instruction`` names (the target object,
    the zone colour or the direction; the rest of the layout follows the seed), and the
    observation's ``instruction`` is those exact words. Reinforcement learning on a
    language-specified reward uses it: the instruction is fixed per run.
    """

    def __init__(self, env: gym.Env, instruction: str) -> None:
        from embodied.errors import ConfigError

        from .instructions import InstructionError, parse_instruction

        gym.utils.RecordConstructorArgs.__init__(self, instruction=instruction)
        super().__init__(env)
        try:
            self.task = parse_instruction(instruction)
        except InstructionError as e:
            raise ConfigError(f"cannot use {instruction[:80]!r}: {e}") from None
        family = env.unwrapped.family.name  # type: ignore[attr-defined]
        if self.task.family != family:
            raise ConfigError(f"the instruction asks for a {self.task.family} task, this env runs {family} tasks; pick a {self.task.family} env")
        self.instruction = instruction

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        return self.env.reset(seed=seed, options={**(options or {}), "task": self.task._asdict(), "instruction": self.instruction})


class StateOnly(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The observation's ``state`` vector alone, a float32 Box (for policies that get the goal otherwise, e.g. fixed per run)."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        self.observation_space = env.observation_space[STATE]  # type: ignore[index]

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        return observation[STATE]


def task_first(state: np.ndarray, task: Task) -> np.ndarray:
    """``state`` (S,) or (N, S) with its object slots reordered so the one ``task`` names comes first, and its zone slots
    so the named zone comes first (the others keep their order; nothing moves where nothing matches).

    The order of the slots is the scene's, so a policy that sees the state vector alone cannot tell which object an
    instruction means; with the instruction fixed for a run, this puts it where the policy looks. It reads the
    colours and shapes in the state and the instruction's words, nothing the env keeps to itself.
    """
    s = np.array(state, dtype=np.float32, copy=True)
    flat = s.reshape(-1, s.shape[-1])
    for row in flat:
        objects = row[_SL["objects"]].reshape(N_OBJECTS, OBJECT_FEATURES)
        named = np.all(np.abs(objects[:, 6:9] - COLOURS[task.colour]) < 1e-3, axis=1) & (objects[:, 9 + SHAPES.index(task.shape)] > 0.5)
        row[_SL["objects"]] = objects[np.argsort(~named, kind="stable")].reshape(-1)
        if task.zone:
            zones = row[_SL["zones"]].reshape(N_ZONES, ZONE_FEATURES)
            named = np.all(np.abs(zones[:, 3:6] - COLOURS[task.zone]) < 1e-3, axis=1)
            row[_SL["zones"]] = zones[np.argsort(~named, kind="stable")].reshape(-1)
    return s


def egocentric(state: np.ndarray) -> np.ndarray:
    """``state`` (S,) or (N, S) with every position of the scene given relative to the fingertip (m): each object's
    position and start position, each goal zone's centre and each present keep-out zone's centre, minus ``ee_pos``.
    The fingertip's own position stays in the table frame (workspace bounds are absolute); absent keep-out slots
    (parked off the table, flag 0) are left as they are.

    A small policy network maps "a keep-out zone 5 cm ahead" to a detour far more easily than it does two absolute
    positions; Safety-Gymnasium's agents see their hazards through egocentric lidar for the same reason.
    """
    s = np.array(state, dtype=np.float32, copy=True)
    lead = s.shape[:-1]
    ee = s[..., _SL["ee_pos"]].copy()[..., None, :]  # (..., 1, 2)
    objects = s[..., _SL["objects"]].reshape(*lead, N_OBJECTS, OBJECT_FEATURES)
    objects[..., 0:2] -= ee
    objects[..., 12:14] -= ee
    zones = s[..., _SL["zones"]].reshape(*lead, N_ZONES, ZONE_FEATURES)
    zones[..., 0:2] -= ee
    hazards = s[..., _SL["hazards"]].reshape(*lead, N_HAZARDS, HAZARD_FEATURES)
    hazards[..., 0:2] -= ee * (hazards[..., 6:7] > 0.5)
    s[..., _SL["objects"]] = objects.reshape(*lead, -1)
    s[..., _SL["zones"]] = zones.reshape(*lead, -1)
    s[..., _SL["hazards"]] = hazards.reshape(*lead, -1)
    return s


LIDAR_BINS = 16
"""Rays of :func:`keep_out_lidar`, evenly spaced round the fingertip (Safety-Gymnasium's default count)."""
LIDAR_REACH = 0.3
"""How far (m) :func:`keep_out_lidar` sees: a zone this far along a ray or farther reads 0."""


def keep_out_lidar(state: np.ndarray, bins: int = LIDAR_BINS, reach: float = LIDAR_REACH) -> np.ndarray:
    """Safety-Gymnasium's hazard lidar for ``state`` (S,) or (N, S): (..., bins) readings in [0, 1], one per ray.

    Ray ``k`` leaves the fingertip at angle ``2 pi k / bins`` (table frame, counter-clockwise from +x) and reads
    ``1 - t / reach`` where it first meets a present keep-out zone's disc at distance ``t`` (0 when no zone lies
    within ``reach`` along it). A small network reads "a zone ahead, on the way" off these directly. Inside a zone
    a ray reads ``0.5 + 0.5 x (its way out) / (the zone's diameter)``: highest towards the centre, lowest towards the
    nearest edge, so the readings still point the way out (a flat 1 on every ray left a trained policy parked at a
    zone's centre).
    """
    s = np.asarray(state, dtype=np.float64)
    lead = s.shape[:-1]
    ee = s[..., _SL["ee_pos"]]  # (..., 2)
    hazards = s[..., _SL["hazards"]].reshape(*lead, N_HAZARDS, HAZARD_FEATURES)
    rel = hazards[..., 0:2] - ee[..., None, :]  # (..., H, 2) zone centres from the fingertip
    radius, present = hazards[..., 2], hazards[..., 6] > 0.5  # (..., H)
    rays = _rays(bins)  # (B, 2)
    along = np.einsum("...hc,bc->...hb", rel, rays)  # (..., H, B) centre's projection on each ray
    d2 = (rel ** 2).sum(-1)[..., None]  # (..., H, 1)
    r2 = (radius ** 2)[..., None]
    disc = r2 - (d2 - along ** 2)  # >= 0 where the ray's line meets the disc
    root = np.sqrt(np.maximum(disc, 0.0))
    t = along - root  # distance to the entry point
    hit = (disc >= 0) & (t >= 0) & present[..., None]
    inside = (d2 <= r2) & present[..., None]  # (..., H, 1)
    reading = np.where(hit, np.clip(1.0 - t / reach, 0.0, 1.0), 0.0)
    way_out = (along + root) / np.maximum(2 * radius[..., None], 1e-9)  # the exit's distance over the diameter
    reading = np.where(inside, 0.5 + 0.5 * np.clip(way_out, 0.0, 1.0), reading)
    return reading.max(axis=-2).astype(np.float32) if N_HAZARDS else np.zeros((*lead, bins), np.float32)


@functools.lru_cache(maxsize=8)
def _rays(bins: int) -> np.ndarray:
    """Unit directions (bins, 2) of the lidar's rays, counter-clockwise from +x (computed once per count: the lidar runs
    every env step)."""
    angles = 2 * np.pi * np.arange(bins) / bins
    rays = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    rays.flags.writeable = False
    return rays


def with_keep_out_lidar(state: np.ndarray) -> np.ndarray:
    """``state`` (..., S) with :func:`keep_out_lidar`'s readings appended: (..., S + LIDAR_BINS)."""
    s = np.asarray(state, dtype=np.float32)
    return np.concatenate([s, keep_out_lidar(s)], axis=-1)


class StateView(gym.ObservationWrapper):
    """The observation's ``state`` through ``view``, a function of state vectors (N, S) -> (N, S') such as
    :func:`task_first` for a task, :func:`egocentric` or :func:`with_keep_out_lidar` (what an RL policy trained on the
    view sees at run time too). A view that changes the length gets an unbounded ``state`` space of its length."""

    def __init__(self, env: gym.Env, view: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__(env)
        self.view = view
        space = env.observation_space[STATE]  # type: ignore[index]
        width = view(np.zeros((1, space.shape[0]), dtype=space.dtype)).shape[-1]
        if width != space.shape[0]:
            spaces = dict(env.observation_space.spaces)  # type: ignore[attr-defined]
            spaces[STATE] = gym.spaces.Box(-np.inf, np.inf, shape=(width,), dtype=np.float32)
            self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, STATE: self.view(observation[STATE][None])[0]}


class TaskFirst(StateView, gym.utils.RecordConstructorArgs):
    """The observation's ``state`` with the object and zone that ``task`` names in the first slots (:func:`task_first`)."""

    def __init__(self, env: gym.Env, task: Task) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, task=task)
        super().__init__(env, lambda states: task_first(states, task))
        self.task = task
