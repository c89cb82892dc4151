"""The dense part of a run's reward paid as a potential (potential-based reward shaping, Ng, Harada & Russell 1999).

A learned reward's dense part is the model's estimate of a function of the state the step
reaches (the suite's dense terms are minus distances: fingertip to object, object to goal).
Paid as is, every step pays the model's error at the state it reaches, so a policy that
lingers where the model errs upwards collects that error once per step, and reinforcement
learning climbs the error landscape instead of the task (BENCHMARKS.md, issue 6: a step's
action moves the suite's dense reward by about 0.007, the learned dense reward's error between
states is about 0.07 per step).

Paid as a potential, a step from s to s' pays ``scale x (gamma x phi(s') - phi(s))`` with
phi the dense part of the step that reached s (the first step of an episode counts its own
state as where it started: ``scale x (gamma - 1) x phi(s_1)``). Over an episode the dense
payments telescope to ``scale x (gamma^T x phi(s_T) - phi(s_1))`` (discounted to its start): the model's error at
a state enters the return once, where the episode ends, not once per step spent there. The
success bonus (the env's, or the one the model's success settles) and every other part of
the reward (a Lagrangian's cost penalty) are paid as before, so with the task's success as
the objective the shaping only steers exploration: it moves the return of a policy by the
ends' potentials, and hovering pays nothing.

It also takes away what the suite's dense penalties say by themselves: that every step before
the success costs. Measured on PointPushDir (BENCHMARKS.md, nineteenth session), PPO learned
less in 500,000 steps with it, on the true reward as on the learned one: an ablation for
reward-model research, not a default.

Each env of the vector writes its step's dense reward into ``info[DENSE_REWARD]``:
:class:`DenseTap` for the env's own reward, :class:`~embodied.policies.vec_reward.VecLearnedReward`
for the model's.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from embodied.errors import ConfigError

DENSE_REWARD = "dense_reward"
"""``info`` key: the part of the step's reward (env reward units) that :class:`VecPotentialShaping` pays as a potential."""
SUCCESS_TERM = "reward_success"
"""``info`` key of the suite's envs: the success bonus paid on this step (the rest of their reward is dense)."""


class DenseTap(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Write the env's dense reward (its reward less the success term ``info['reward_success']``, if any) into
    ``info[DENSE_REWARD]``. Observations, rewards and episode ends pass unchanged; wrap right after the task is fixed,
    before any wrapper that adds to the reward (a cost penalty is not dense task reward)."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, DENSE_REWARD: float(reward) - float(info.get(SUCCESS_TERM, 0.0))}


class VecPotentialShaping(VecEnvWrapper):
    """Pay each env's dense reward (``info[DENSE_REWARD]``) as a potential: see the module doc.

    ``scale`` (> 0) multiplies the potential (the dense reward's units per unit of potential); ``gamma`` is the
    discount of the learner, in (0, 1]. ``info`` gains ``shaped_reward``, the dense payment of the step.
    """

    def __init__(self, venv: VecEnv, scale: float, gamma: float) -> None:
        super().__init__(venv)
        if not (np.isfinite(scale) and scale > 0):
            raise ConfigError(f"the potential's scale must be a finite number > 0, got {scale}")
        if not 0.0 < gamma <= 1.0:
            raise ConfigError(f"the discount of a potential-shaped reward must be in (0, 1], got {gamma}")
        self.scale = float(scale)
        self.gamma = float(gamma)
        self._previous = np.zeros(venv.num_envs, dtype=np.float64)
        self._first = np.ones(venv.num_envs, dtype=bool)

    def reset(self) -> Any:
        obs = self.venv.reset()
        self._first[:] = True
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        if any(DENSE_REWARD not in info for info in infos):
            raise ConfigError(f"VecPotentialShaping needs each step's dense reward in info['{DENSE_REWARD}'] (wrap each env in DenseTap, "
                              "or score it with VecLearnedReward)")
        potential = np.array([info[DENSE_REWARD] for info in infos], dtype=np.float64)
        previous = np.where(self._first, potential, self._previous)
        shaped = self.scale * (self.gamma * potential - previous)
        for info, s in zip(infos, shaped):
            info["shaped_reward"] = float(s)
        self._previous = potential
        self._first = np.array(dones, dtype=bool)
        return obs, (np.asarray(rewards, dtype=np.float64) - potential + shaped).astype(np.float32), dones, infos
