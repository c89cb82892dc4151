"""The learned reward for a vector of envs, scored in one batch per step (stable-baselines3).

:class:`~embodied.policies.LearnedReward` scores each env's step on its own: two one-token
passes of the model per env step, which on a CPU costs more than the env and the policy
together. Here the envs of an SB3 ``VecEnv`` are scored together:

- each env carries a :class:`RewardTap` where a ``LearnedReward`` would sit (right after the
  task is fixed). It leaves the reward alone and writes what the model needs into ``info``:
  the raw state after the step (``score_state``; also in the reset's info), the action as the
  env took it (``score_action``) and the env's own reward (``true_reward``);
- :class:`VecLearnedReward` wraps the ``VecEnv`` and, after each step, scores every env's
  action in one batch (:meth:`RewardModel.step_each`), each env with its own key/value-cached
  context, restarted from the reset's info when its episode ends.

With ``end_on_success``, an env's episode also ends where the model's success probability
first exceeds it, as with :class:`~embodied.policies.LearnedReward`: the step is returned
``done`` with ``terminal_observation`` in its info, and the env is reset (through
``env_method``) so the next observation is the new episode's first, as SB3's auto-reset
leaves it.

The reward reaching the vector is the per-env chain's: the env's reward plus whatever the
wrappers after the tap add to it (a Lagrangian cost penalty subtracts ``multiplier x cost``).
:class:`VecLearnedReward` swaps the env's reward for the model's inside that sum, so what SB3
sees is what a ``LearnedReward`` in the tap's place would have given the same wrappers
(tests/test_vec_reward.py checks both agree step by step).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from embodied import specs
from embodied.errors import ConfigError

from .reward import LEARNED_COST, LEARNED_SUCCESS, TRUE_REWARD, EnsembleContext, RewardContext, RewardEnsemble, RewardModel, check_threshold, settled_dense, success_payment
from .shaping import DENSE_REWARD

SCORE_STATE = "score_state"
"""``info`` key of :class:`RewardTap`: (S,) float32 raw state after the step (at reset: the first state)."""
LEARNED_SPREAD = "learned_spread"
"""``info`` key of :class:`VecLearnedReward` with a :class:`~embodied.policies.RewardEnsemble`: the standard deviation
of its members' rewards of this step (env reward units)."""
SCORE_ACTION = "score_action"
"""``info`` key of :class:`RewardTap`: (A,) float32 action as the tapped env took it."""


class RewardTap(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Put what the reward model scores into ``info``: ``score_state``, ``score_action`` and ``true_reward``.

    Observations, rewards and episode ends pass unchanged. Wrap the suite's dict-observation env
    (before ``StateOnly`` and any view of the state).
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict) or specs.STATE not in space.spaces:
            raise ConfigError("RewardTap needs the suite's dict observations with a 'state' (wrap before StateOnly)")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, SCORE_STATE: np.array(obs[specs.STATE], dtype=np.float32)}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, SCORE_STATE: np.array(obs[specs.STATE], dtype=np.float32),
                SCORE_ACTION: np.array(action, dtype=np.float32), TRUE_REWARD: float(reward)}
        return obs, reward, terminated, truncated, info


class VecLearnedReward(VecEnvWrapper):
    """Replace each env's reward (as tapped by :class:`RewardTap`) by the model's score for one instruction.

    Every step scores all envs' actions in one batch. ``info`` gains ``learned_success`` and
    ``learned_cost`` (the env's ``true_reward``, reward terms and ``is_success`` stay). The
    instruction is fixed for the vector: the task of each env must be the one it names
    (:class:`embodied.envs.FixedTask`). ``end_on_success``: see the module doc; ``success_bonus`` and
    ``reward_ceiling``: :func:`~embodied.policies.reward.settle_success`; ``info['dense_reward']`` is the learned reward's
    dense part (:func:`~embodied.policies.reward.settled_dense`), for :class:`~embodied.policies.shaping.VecPotentialShaping`.
    """

    def __init__(self, venv: VecEnv, reward_model: RewardModel | RewardEnsemble, instruction: str, end_on_success: float | None = None,
                 success_bonus: float | None = None, reward_ceiling: float | None = None) -> None:
        super().__init__(venv)
        check_threshold(end_on_success, success_bonus, reward_ceiling)
        want = (reward_model.model.cfg.action_dim,)
        if venv.action_space.shape != want:
            raise ConfigError(f"the model scores actions of shape {want}, these envs take {venv.action_space.shape}; use control='ee'")
        if reward_model.model.pixel_enc is not None:
            raise ConfigError("VecLearnedReward scores state-only models; wrap each env in LearnedReward for a pixel model")
        self.reward_model = reward_model
        self.instruction = instruction
        self.end_on_success = end_on_success
        self.success_bonus = success_bonus
        self.reward_ceiling = reward_ceiling
        self._contexts: list[RewardContext | EnsembleContext] = []

    def _start(self, info: dict[str, Any]) -> RewardContext | EnsembleContext:
        if SCORE_STATE not in info:
            raise ConfigError("VecLearnedReward needs each env wrapped in RewardTap (no 'score_state' in the reset's info)")
        return self.reward_model.start([self.instruction], info[SCORE_STATE][None])

    def reset(self) -> Any:
        obs = self.venv.reset()
        self._contexts = [self._start(info) for info in self.venv.reset_infos]
        return obs

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        if not self._contexts:
            raise RuntimeError("call reset() before step()")
        if any(SCORE_ACTION not in info for info in infos):
            raise ConfigError("VecLearnedReward needs each env wrapped in RewardTap (no 'score_action' in a step's info)")
        actions = np.stack([info[SCORE_ACTION] for info in infos])
        states = np.stack([info[SCORE_STATE] for info in infos])
        out = self.reward_model.step_each(self._contexts, actions, states, observe=~np.asarray(dones, dtype=bool))
        true = np.array([info[TRUE_REWARD] for info in infos], dtype=np.float64)
        dense = settled_dense(out["reward"], out["success"], self.end_on_success, self.success_bonus, self.reward_ceiling)
        learned = dense + success_payment(out["success"], self.end_on_success, self.success_bonus)  # = settle_success(...)
        rewards = (np.asarray(rewards, dtype=np.float64) - true + learned).astype(np.float32)
        dones = np.array(dones, dtype=bool)
        for i, info in enumerate(infos):
            info[LEARNED_SUCCESS] = float(out["success"][i])
            info[LEARNED_COST] = float(out["cost"][i])
            info[DENSE_REWARD] = float(dense[i])
            if "reward_spread" in out:  # an ensemble's disagreement on this step's reward
                info[LEARNED_SPREAD] = float(out["reward_spread"][i])
            if dones[i]:
                self._contexts[i] = self._start(self.venv.reset_infos[i])
            elif self.end_on_success is not None and out["success"][i] > self.end_on_success:
                first, reset_info = self.venv.env_method("reset", indices=[i])[0]
                if isinstance(obs, dict):
                    info["terminal_observation"] = {k: v[i].copy() for k, v in obs.items()}
                    for k, v in obs.items():
                        v[i] = first[k]
                else:
                    info["terminal_observation"] = obs[i].copy()
                    obs[i] = first
                dones[i] = True
                self._contexts[i] = self._start(reset_info)
        return obs, rewards, dones, infos
