"""PPO-Lagrangian with a cost critic (`embodied rl --cost-limit C --cost-critic`): costs line up with the rollout, their
GAE is SB3's, and the policy's advantage turns against costly actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from embodied.rl_cost import CostRecorder, cost_advantages, lagrangian_ppo


class CostlyRight(gym.Env):
    """A 2-d random observation, one action in [-1, 1]; reward 1 per step, cost 1 when the action is > 0; 20 steps,
    the last one cut by the time limit."""

    observation_space = gym.spaces.Box(-5.0, 5.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.normal(size=2).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        cost = float(np.asarray(action)[0] > 0)
        return self.np_random.normal(size=2).astype(np.float32), 1.0, False, self.t >= 20, {"cost": cost}


def make_model(multiplier: float, n_envs: int = 4, seed: int = 0):
    venv = DummyVecEnv([CostlyRight for _ in range(n_envs)])
    venv.seed(seed)
    venv = VecNormalize(venv, gamma=0.99)
    return lagrangian_ppo(lambda: multiplier, [32, 32], policy="MlpPolicy", env=CostRecorder(venv), n_steps=64, batch_size=64,
                          n_epochs=4, seed=seed, device="cpu", verbose=0)


def test_cost_gae_is_sb3s_gae_of_the_costs():
    rng = np.random.default_rng(0)
    T, n = 17, 3
    costs, values = rng.random((T, n)).astype(np.float32), rng.random((T, n)).astype(np.float32)
    starts = (rng.random((T, n)) < 0.2).astype(np.float32)
    last_values, last_dones = rng.random(n).astype(np.float32), np.array([True, False, False])
    buf = RolloutBuffer(T, gym.spaces.Box(-1, 1, (1,)), gym.spaces.Box(-1, 1, (1,)), gamma=0.97, gae_lambda=0.9, n_envs=n)
    buf.rewards, buf.values, buf.episode_starts = costs.copy(), values.copy(), starts.copy()
    buf.compute_returns_and_advantage(torch.as_tensor(last_values), last_dones)
    adv, targets = cost_advantages(costs, values, starts, last_values, last_dones, gamma=0.97, gae_lambda=0.9)
    assert np.allclose(adv, buf.advantages, atol=1e-6) and np.allclose(targets, buf.returns, atol=1e-6)


def test_recorded_costs_line_up_with_the_rollouts_actions_and_truncations():
    model = make_model(0.0)
    model._setup_learn(64 * 4, None)
    model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer, n_rollout_steps=64)
    costs, truncated = model.env.take(64)
    assert costs.shape == (64, 4)
    assert np.array_equal(costs, (model.rollout_buffer.actions[..., 0] > 0).astype(np.float32))  # step t's cost is step t's action's
    assert [t for t, cut in enumerate(truncated) if cut] == [19, 39, 59]  # 20-step episodes, cut by the time limit
    assert all(sorted(k for k, _ in cut) == [0, 1, 2, 3] for cut in truncated if cut)
    with pytest.raises(RuntimeError, match="cost recorder saw 0 steps"):
        model.env.take(64)


def test_the_multiplier_turns_the_advantage_against_costly_actions():
    deltas = {}
    for lam in (0.0, 5.0):
        model = make_model(lam)
        model._setup_learn(64 * 4, None)
        model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer, n_rollout_steps=64)
        reward_adv = model.rollout_buffer.advantages.copy()
        costly = model.rollout_buffer.actions[..., 0] > 0
        model.weigh_costs()
        adv = model.rollout_buffer.advantages
        if lam == 0.0:
            assert np.allclose(adv, reward_adv)  # no multiplier: SB3's advantages, untouched
        deltas[lam] = float(adv[costly].mean() - adv[~costly].mean())
        assert model.cost_log[-1]["multiplier"] == lam
    assert deltas[5.0] < deltas[0.0] - 0.5


def test_ppo_lagrangian_with_a_cost_critic_learns_to_avoid_the_cost():
    model = make_model(5.0)
    model.learn(64 * 4 * 25)
    obs = torch.as_tensor(np.random.default_rng(1).normal(size=(500, 2)), dtype=torch.float32)
    with torch.no_grad():
        mean = model.policy.get_distribution(obs).distribution.mean.numpy()
    assert (mean[:, 0] > 0).mean() < 0.1  # plain PPO on this reward has no reason to prefer either side
    assert model.cost_log[-1]["cost_value_loss"] < model.cost_log[0]["cost_value_loss"]


def test_cli_runs_the_cost_critic_form_and_refuses_it_without_a_limit(tmp_path, capsys):
    import json

    from embodied.cli import main

    base = ["rl", "--env", "embodied/PointReach-v0", "--instruction", "touch the red cube", "--reward", "true", "--steps", "600",
            "--envs", "2", "--episodes", "2", "--constraint", "stay out of the blue zone", "--cost-critic", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "no_limit")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cost-critic is PPO-Lagrangian's" in err[0] and not (tmp_path / "no_limit").exists()
    assert main([*base, "--cost-limit", "1", "--out", str(tmp_path / "cc")]) == 0
    r = json.loads((tmp_path / "cc" / "rl.json").read_text())
    assert r["lagrange"]["cost_critic"] is True and r["spec"]["cost_critic"] is True

