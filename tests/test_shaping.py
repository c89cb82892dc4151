"""The dense reward paid as a potential (policies/shaping.py): per-step payments, telescoping over episodes, the rest untouched."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

from embodied.envs import FixedTask, make
from embodied.errors import ConfigError
from embodied.policies.shaping import DENSE_REWARD, DenseTap, VecPotentialShaping


class Walk(gym.Env):
    """A scripted episode: the dense reward of step t is ``dense[t]``, the last step pays a success bonus of 10 and a
    penalty of 0.5 is subtracted on every step by a wrapper after the tap (as a Lagrangian's cost penalty is)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, dense: list[float]) -> None:
        self.dense = dense
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        d = self.dense[self.t]
        self.t += 1
        done = self.t == len(self.dense)
        bonus = 10.0 if done else 0.0
        return np.zeros(1, np.float32), d + bonus, done, False, {"reward_success": bonus}


class Penalty(gym.Wrapper):
    def step(self, action):
        obs, r, te, tr, info = self.env.step(action)
        return obs, r - 0.5, te, tr, info


EPISODES = ([-0.9, -0.5, -0.2, -0.6, -0.1], [-0.3, -0.8, -0.4])


def _run(scale: float, gamma: float, steps: int):
    venv = VecPotentialShaping(DummyVecEnv([lambda d=d: Penalty(DenseTap(Walk(d))) for d in EPISODES]), scale, gamma)
    venv.reset()
    rows = []
    for _ in range(steps):
        _, rewards, dones, infos = venv.step(np.zeros((2, 1), np.float32))
        rows.append((rewards.astype(np.float64), dones.copy(), [dict(i) for i in infos]))
    return rows


def test_each_step_pays_the_scaled_discounted_difference_of_potentials_and_the_rest_as_before():
    scale, gamma = 3.0, 0.9
    rows = _run(scale, gamma, 11)
    for env, dense in enumerate(EPISODES):
        T = len(dense)
        for t in range(11):
            phi, k = dense[t % T], t % T  # the scripted episode repeats
            before = dense[k - 1] if k else phi  # an episode's first step starts from its own state
            rewards, dones, infos = rows[t]
            bonus = 10.0 if k == T - 1 else 0.0
            assert infos[env][DENSE_REWARD] == pytest.approx(phi)
            assert infos[env]["shaped_reward"] == pytest.approx(scale * (gamma * phi - before))
            # the bonus and the penalty after the tap pass unchanged
            assert rewards[env] == pytest.approx(scale * (gamma * phi - before) + bonus - 0.5, abs=1e-5)
            assert dones[env] == (k == T - 1)


@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_an_episodes_discounted_dense_payments_telescope_to_its_ends(gamma):
    scale = 2.0
    rows = _run(scale, gamma, 16)  # env 0: three episodes of 5 (and one step); env 1: five of 3
    for env, dense in enumerate(EPISODES):
        T = len(dense)
        for start in range(0, 16 - T + 1, T):
            paid = sum(gamma ** i * rows[start + i][2][env]["shaped_reward"] for i in range(T))
            assert paid == pytest.approx(scale * (gamma ** T * dense[-1] - dense[0]))
    # so lingering at a state pays nothing: with gamma 1 the payments of an episode depend on its first and last states only
    same_ends = [-0.9, 5.0, 5.0, 5.0, -0.1]
    venv = VecPotentialShaping(DummyVecEnv([lambda: DenseTap(Walk(same_ends))]), scale, 1.0)
    venv.reset()
    paid = sum(venv.step(np.zeros((1, 1), np.float32))[3][0]["shaped_reward"] for _ in same_ends)
    assert paid == pytest.approx(scale * (-0.1 - -0.9))


def test_the_suite_env_tells_its_dense_reward_without_the_success_bonus():
    env = DenseTap(FixedTask(make("embodied/PointPushDir-v0", terminate_on_success=False), "push the red cube to the right"))
    env.reset(seed=3)
    try:
        for _ in range(5):
            _, reward, _, _, info = env.step(env.action_space.sample())
            dense = info["reward_reach"] + info["reward_goal"] + info["reward_ctrl"]
            assert info[DENSE_REWARD] == pytest.approx(dense) and reward == pytest.approx(dense + info["reward_success"])
    finally:
        env.close()


def test_shaping_refuses_a_bad_scale_or_discount_and_envs_that_do_not_tell_their_dense_reward():
    venv = DummyVecEnv([lambda: Walk([-1.0, -0.5])])
    for scale, gamma in ((0.0, 0.99), (-1.0, 0.99), (float("inf"), 0.99), (1.0, 0.0), (1.0, 1.5)):
        with pytest.raises(ConfigError):
            VecPotentialShaping(venv, scale, gamma)
    untapped = VecPotentialShaping(venv, 1.0, 0.99)
    untapped.reset()
    with pytest.raises(ConfigError, match="DenseTap"):
        untapped.step(np.zeros((1, 1), np.float32))
