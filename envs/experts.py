"""Scripted experts for every task family on every embodiment.

:class:`ScriptedExpert` follows the policy protocol of stable-baselines3 (``predict``), so
``evaluate_policy`` and our collectors run it unchanged. It reads the task from the env it
is bound to (privileged information: the target and goal), not from the observation.
``noise`` adds temporally correlated (Ornstein-Uhlenbeck) noise of that standard deviation
to each action dimension: around 0.3 it yields imperfect episodes, from about 1.0 many
failures, which reward learning needs.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class ScriptedExpert:
    """An expert bound to one env (a :class:`~embodied.envs.tabletop.TabletopEnv`, wrapped or not)."""

    def __init__(self, env: gym.Env, noise: float = 0.0, seed: int | None = None, correlation: float = 0.8) -> None:
        if noise < 0:
            raise ValueError(f"noise={noise} must be >= 0")
        if not 0 <= correlation < 1:
            raise ValueError(f"correlation={correlation} must be in [0, 1)")
        self.env = env.unwrapped
        if not hasattr(self.env, "expert_action"):
            raise TypeError(f"{type(self.env).__name__} has no scripted expert")
        self.noise, self.correlation = float(noise), float(correlation)
        self.rng = np.random.default_rng(seed)
        self._n = np.zeros(env.action_space.shape)

    def reset(self) -> None:
        """Forget the noise state (call at the start of each episode)."""
        self._n[:] = 0.0

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, None]:
        """The expert's action for the env's current state; ``deterministic`` drops the noise."""
        if episode_start is not None and np.any(episode_start):
            self.reset()
        a = self._command()
        if self.noise > 0 and not deterministic:
            c = self.correlation
            self._n = c * self._n + self.noise * np.sqrt(1 - c * c) * self.rng.standard_normal(self._n.shape)
            a = np.clip(a + self._n, -1.0, 1.0).astype(np.float32)
        return _like(observation, a), None

    def _command(self) -> np.ndarray:
        """The noise-free action for the env's current state (subclasses override it: another goal, another speed)."""
        return self.env.expert_action()


class HaltingExpert(ScriptedExpert):
    """The expert that stalls: it acts as :class:`ScriptedExpert` until a step drawn uniformly from
    ``[0, horizon)`` at each reset, then sends the expert's command shrunk by a gain drawn
    uniformly from ``[0, max_gain]`` (0: it stops dead) to the episode's end.

    A failure that neither action noise nor random play shows: the fingertip comes to rest
    beside the object it was about to push, or leans on it too weakly to move it, and the task
    stays undone. Episodes whose halt falls after the expert has solved the task stay solved. A
    reward model that never saw this failure reads "at rest against the object, late in the
    episode" as success (what PPO on the learned reward of PointPushDir found and exploited).
    """

    def __init__(self, env: gym.Env, horizon: int, noise: float = 0.0, seed: int | None = None, max_gain: float = 0.1) -> None:
        """``horizon``: steps (>= 1) the halt is drawn from; ``noise`` as in :class:`ScriptedExpert`; ``max_gain`` in [0, 1]."""
        if horizon < 1:
            raise ValueError(f"horizon={horizon} must be >= 1")
        if not 0.0 <= max_gain <= 1.0:
            raise ValueError(f"max_gain={max_gain} must be in [0, 1]")
        super().__init__(env, noise=noise, seed=seed)
        self.horizon = int(horizon)
        self.max_gain = float(max_gain)
        self.halt_step = 0
        self.gain = 0.0
        self._t = 0

    def reset(self) -> None:
        """Forget the noise state and draw the step at which this episode's expert halts, and its gain after it."""
        super().reset()
        self.halt_step = int(self.rng.integers(0, self.horizon))
        self.gain = float(self.rng.uniform(0.0, self.max_gain))
        self._t = 0

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, None]:
        """The expert's action before the halt step, ``gain`` times the noise-free expert's from it on."""
        if episode_start is not None and np.any(episode_start):
            self.reset()
        self._t += 1
        if self._t > self.halt_step:
            return _like(observation, (self.gain * self.env.expert_action()).astype(np.float32)), None
        return super().predict(observation, deterministic=deterministic)


class HastyExpert(ScriptedExpert):
    """The expert in a hurry: each episode its noise-free command is multiplied by a gain drawn uniformly from
    ``[1, max_gain]`` and clipped to the action box, so it lines up and pushes at up to full speed.

    The expert pushes at 0.54 of the top speed (its controller's own pace); an RL policy learns to strike at full
    speed, solving PointPushDir in about 20 steps where the expert takes about 34. A success classifier trained on
    the expert alone never saw an object sliding past the success line that fast, and calls those solves failures
    (BENCHMARKS.md, issue 6, eighteenth session). ``noise`` adds correlated noise as in :class:`ScriptedExpert`
    (fast pushes that drift: near misses at speed).
    """

    def __init__(self, env: gym.Env, noise: float = 0.0, seed: int | None = None, max_gain: float = 3.0) -> None:
        """``max_gain`` >= 1: the largest factor on the expert's command (1 is the expert itself)."""
        if not max_gain >= 1.0:
            raise ValueError(f"max_gain={max_gain} must be >= 1")
        super().__init__(env, noise=noise, seed=seed)
        self.max_gain = float(max_gain)
        self.gain = 1.0
        """This episode's factor on the expert's command, drawn at :meth:`reset`."""

    def reset(self) -> None:
        """Forget the noise state and draw this episode's gain."""
        super().reset()
        self.gain = float(self.rng.uniform(1.0, self.max_gain))

    def _command(self) -> np.ndarray:
        """The expert's command times this episode's gain, clipped to [-1, 1]."""
        return np.clip(self.gain * super()._command(), -1.0, 1.0).astype(np.float32)


class AstrayExpert(ScriptedExpert):
    """The expert of another task: each episode it pushes the named object the way another instruction of the same
    family would (another direction or zone, drawn per episode), so the episode, scored under its own instruction, fails.

    The failure that matters most to a reward model of language: the right object pushed well, the wrong way. A model
    that never saw it reads any clean push as success whatever direction was asked (a learned reward then paid PPO
    for pushing the red cube left when asked to push it right: BENCHMARKS.md, issue 6). Needs a family with
    directions or zones (push_dir, push_zone).
    """

    def __init__(self, env: gym.Env, seed: int | None = None) -> None:
        super().__init__(env, seed=seed)
        self.goal: Any = None
        """This episode's other goal (an ``embodied.envs.tasks.Goal``), drawn at its first step; None before."""

    def reset(self) -> None:
        """Forget the noise state and this episode's other goal (drawn from the env at the episode's first step)."""
        super().reset()
        self.goal = None

    def _command(self) -> np.ndarray:
        """The expert's action for this episode's other goal."""
        if self.goal is None:
            self.goal = self.env.other_goal(self.rng)
            if self.goal is None:
                raise ValueError(f"the {self.env.family.name} family asks for nothing else of its object: "
                                 "the astray expert needs push_dir or push_zone")
        return self.env.expert_action(self.goal)


class RandomPolicy:
    """Uniform random actions, with the same ``predict`` protocol as the experts."""

    def __init__(self, action_space: gym.spaces.Box, seed: int | None = None) -> None:
        self.action_space = action_space
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Nothing to forget."""

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> tuple[np.ndarray, None]:
        low, high = self.action_space.low, self.action_space.high
        return _like(observation, self.rng.uniform(low, high).astype(self.action_space.dtype)), None


class WanderPolicy:
    """Random commands held for a while: a direction and magnitude drawn uniformly from the action box, kept for a
    number of steps drawn uniformly from ``[min_hold, max_hold]``, then drawn again.

    Where :class:`RandomPolicy` (a fresh command each step) jitters near the start, this crosses the table, runs into
    its edges and corners and bumps objects on the way: states no demonstration visits. A reward model that never
    saw them guesses their reward, and PPO on the learned reward of PointPushDir found such a guess to exploit (the
    fingertip pinned in a corner of the table with a saturated command).
    """

    def __init__(self, action_space: gym.spaces.Box, seed: int | None = None, min_hold: int = 5, max_hold: int = 30) -> None:
        """``min_hold`` <= ``max_hold``: steps (>= 1) each command is held."""
        if not 1 <= min_hold <= max_hold:
            raise ValueError(f"need 1 <= min_hold <= max_hold, got {min_hold} and {max_hold}")
        self.action_space = action_space
        self.rng = np.random.default_rng(seed)
        self.min_hold, self.max_hold = int(min_hold), int(max_hold)
        self._left = 0
        self._command = np.zeros(action_space.shape, dtype=action_space.dtype)

    def reset(self) -> None:
        """Draw a new command at the next step."""
        self._left = 0

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False) -> tuple[np.ndarray, None]:
        if episode_start is not None and np.any(episode_start):
            self.reset()
        if self._left == 0:
            self._command = self.rng.uniform(self.action_space.low, self.action_space.high).astype(self.action_space.dtype)
            self._left = int(self.rng.integers(self.min_hold, self.max_hold + 1))
        self._left -= 1
        return _like(observation, self._command.copy()), None


def _like(observation: Any, action: np.ndarray) -> np.ndarray:
    """``action`` as ``(1, A)`` when the observation comes batched from a one-env VecEnv (SB3's ``evaluate_policy``)."""
    state = observation.get("state") if isinstance(observation, dict) else None
    if state is not None and np.ndim(state) == 2:
        if len(state) != 1:
            raise ValueError(f"a scripted policy drives one env, got a batch of {len(state)} observations")
        return action[None]
    return action
