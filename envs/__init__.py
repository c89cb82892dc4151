"""The MuJoCo tabletop suite: registered, versioned Gymnasium environments with language goals.

Importing this package registers every id of :data:`ENVS` with Gymnasium, so both
``gymnasium.make("embodied/PointPushZone-v0")`` and :func:`make` work. :func:`make` adds
clear errors: an unknown id names the closest ids, a bad keyword names the allowed ones.
"""

from __future__ import annotations

import difflib
import inspect
import os
from typing import Any

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"  # headless rendering; must be set before MuJoCo is imported

import gymnasium as gym  # noqa: E402

from embodied.errors import ConfigError, UnknownEnvError  # noqa: E402

from .experts import AstrayExpert, HaltingExpert, HastyExpert, RandomPolicy, ScriptedExpert, WanderPolicy
from .splits import ENVS, EnvEntry, env_ids
from .tabletop import TabletopEnv
from .wrappers import (
    FixedTask, InstructionAsBytes, StateOnly, StateView, TaskFirst, egocentric, keep_out_lidar, task_first, with_keep_out_lidar,
)

ENTRY_POINT = "embodied.envs.tabletop:TabletopEnv"

for _entry in ENVS.values():
    if _entry.id not in gym.registry:
        gym.register(_entry.id, entry_point=ENTRY_POINT, kwargs=dict(_entry.kwargs), max_episode_steps=_entry.max_episode_steps)

ENV_KEYWORDS: tuple[str, ...] = tuple(
    p.name for p in inspect.signature(TabletopEnv.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY
) + ("max_episode_steps",)


def entry(env_id: str) -> EnvEntry:
    """The registry entry of ``env_id``; an unknown id raises :class:`UnknownEnvError` naming the closest."""
    if env_id in ENVS:
        return ENVS[env_id]
    close = difflib.get_close_matches(env_id, list(ENVS), n=3, cutoff=0.0)
    raise UnknownEnvError(
        f"unknown env id {env_id!r}; closest: {', '.join(close)} (run `embodied envs list` for all)"
    )


def make(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` with user-facing errors for unknown ids, keywords and values."""
    entry(env_id)
    bad = [k for k in kwargs if k not in ENV_KEYWORDS]
    if bad:
        raise ConfigError(f"unknown keyword {bad[0]!r} for {env_id}; allowed: {', '.join(ENV_KEYWORDS)}")
    try:
        return gym.make(env_id, **kwargs)
    except ConfigError as e:  # gymnasium re-raises with the kwargs appended; keep the original line
        raise ConfigError(f"{env_id}: {e.__cause__ or e}") from e


def card(env_id: str) -> str:
    """The env card of ``env_id``: its id, split, description, keyword arguments and the class card."""
    e = entry(env_id)
    kw = ", ".join(f"{k}={v!r}" for k, v in e.kwargs.items())
    doc = inspect.cleandoc(TabletopEnv.__doc__ or "")
    return f"{e.id} ({e.split}): {e.description}\nkwargs: {kw}; max_episode_steps={e.max_episode_steps}\n\n{doc}"


__all__ = ["AstrayExpert", "ENVS", "EnvEntry", "FixedTask", "HaltingExpert", "HastyExpert", "InstructionAsBytes", "StateOnly", "RandomPolicy", "ScriptedExpert", "TabletopEnv", "WanderPolicy", "card", "entry", "env_ids", "make"]
