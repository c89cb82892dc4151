"""PPO-Lagrangian with a cost critic (``embodied rl --cost-limit C --cost-critic``), OmniSafe's form.

The plain form of :mod:`embodied.rl` subtracts ``multiplier x cost`` from each step's reward, so one critic has to
learn the value of a reward whose mix moves every time the multiplier does, and rare costs (a few steps inside a
keep-out zone in one episode of twenty) drown in it. Here the reward stays the env's, its critic is SB3's, and a second
critic learns the discounted cost-to-go on its own targets; at each update the policy's advantage is::

    A = (A_reward - multiplier x A_cost / sigma) / (1 + multiplier)

with both advantages from GAE(lambda) (``sigma`` is VecNormalize's return scale, which puts the cost in the reward's
units as the reward critic sees it; PPO then normalises ``A`` per minibatch as usual).

Pieces: :class:`CostRecorder` (a VecEnv wrapper that keeps each step's ``info["cost"]`` and the truncated episodes'
last observations, in the order PPO collects them), :func:`cost_advantages` (GAE over a rollout's costs) and
:func:`lagrangian_ppo` (PPO whose ``train`` first rewrites the rollout's advantages, then updates the cost critic).
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from torch import nn


class CostRecorder(VecEnvWrapper):
    """Passes ``venv`` through, keeping per step the envs' costs (n_envs,: ``info["lagrangian_cost"]``, else
    ``info["cost"]``) and, for episodes cut by the time limit, their
    last observations (what the cost critic bootstraps from)."""

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)
        self.costs: list[np.ndarray] = []
        self.truncated: list[list[tuple[int, np.ndarray]]] = []

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        self.costs.append(np.array([float(i.get("lagrangian_cost", i.get("cost", 0.0))) for i in infos], dtype=np.float32))
        self.truncated.append([(k, np.asarray(i["terminal_observation"], dtype=np.float32)) for k, (d, i) in enumerate(zip(dones, infos))
                               if d and i.get("TimeLimit.truncated", False) and i.get("terminal_observation") is not None])
        return obs, rewards, dones, infos

    def take(self, n: int) -> tuple[np.ndarray, list[list[tuple[int, np.ndarray]]]]:
        """The last ``n`` steps' costs (n, n_envs) and truncations, forgetting everything recorded so far."""
        if len(self.costs) < n:
            raise RuntimeError(f"the cost recorder saw {len(self.costs)} steps of a {n}-step rollout: it must be the env PPO steps")
        costs, truncated = np.stack(self.costs[-n:]), self.truncated[-n:]
        self.costs, self.truncated = [], []
        return costs, truncated


def cost_advantages(costs: np.ndarray, values: np.ndarray, episode_starts: np.ndarray, last_values: np.ndarray,
                    last_dones: np.ndarray, gamma: float, gae_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """GAE(lambda) of a rollout's costs: SB3's own ``RolloutBuffer.compute_returns_and_advantage``, run on the costs.

    ``costs``, ``values`` (the cost critic's), ``episode_starts``: (T, n_envs); ``last_values``, ``last_dones``: (n_envs,)
    for the observation after the last step. Returns advantages and the critic's targets (advantages + values), both
    (T, n_envs)."""
    scalar = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)  # the buffer's own observation/action arrays go unused
    buf = RolloutBuffer(len(costs), scalar, scalar, gamma=gamma, gae_lambda=gae_lambda, n_envs=costs.shape[1])
    buf.rewards, buf.values, buf.episode_starts = (np.asarray(a, dtype=np.float32) for a in (costs, values, episode_starts))
    buf.compute_returns_and_advantage(torch.as_tensor(np.asarray(last_values, dtype=np.float32)), np.asarray(last_dones))
    return buf.advantages, buf.returns


def cost_critic(obs_dim: int, net_arch: list[int]) -> nn.Sequential:
    """An MLP (tanh, like SB3's critic) from the normalised observation to the discounted cost-to-go."""
    layers: list[nn.Module] = []
    for width in net_arch:
        layers += [nn.Linear(obs_dim, width), nn.Tanh()]
        obs_dim = width
    return nn.Sequential(*layers, nn.Linear(obs_dim, 1))


def lagrangian_ppo(multiplier_value: Callable[[], float], net_arch: list[int], **ppo_kwargs: Any) -> PPO:
    """SB3 PPO on a :class:`CostRecorder` env (``ppo_kwargs["env"]``) whose advantages weigh in a cost critic's.

    ``multiplier_value()`` is the Lagrange multiplier when an update starts (the run's callback has stepped it at the
    rollout's end). The cost critic trains for PPO's epochs and minibatches on the rollout's cost targets with Adam at
    PPO's learning rate.
    """
    model = _LagrangianPPO(**ppo_kwargs)
    model.setup_cost(multiplier_value, net_arch)
    return model


class _LagrangianPPO(PPO):
    def setup_cost(self, multiplier_value: Callable[[], float], net_arch: list[int]) -> None:
        if not isinstance(self.env, CostRecorder):
            raise TypeError("PPO-Lagrangian with a cost critic steps a CostRecorder env")
        self.multiplier_value = multiplier_value
        self.cost_critic = cost_critic(int(np.prod(self.observation_space.shape)), net_arch).to(self.device)
        self.cost_optimizer = torch.optim.Adam(self.cost_critic.parameters(), lr=self.lr_schedule(1.0))
        self.cost_log: list[dict[str, float]] = []

    def _cost_values(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(obs.reshape(-1, obs.shape[-1]), dtype=torch.float32, device=self.device)
            return self.cost_critic(x).squeeze(-1).cpu().numpy().reshape(obs.shape[:-1])

    def train(self) -> None:
        self.weigh_costs()
        super().train()

    def weigh_costs(self) -> None:
        """Rewrite the collected rollout's advantages to weigh in the cost's (see the module doc), then fit the cost
        critic to the rollout's cost targets."""
        buf = self.rollout_buffer
        assert isinstance(self.env, CostRecorder)
        costs, truncated = self.env.take(buf.buffer_size)
        for t, cut in enumerate(truncated):  # an episode cut by the time limit goes on costing: bootstrap as SB3 does the reward
            for k, last_obs in cut:
                costs[t, k] += self.gamma * float(self._cost_values(last_obs[None])[0])
        values = self._cost_values(buf.observations)  # (T, n_envs)
        last_values = self._cost_values(np.asarray(self._last_obs, dtype=np.float32))
        adv_c, targets = cost_advantages(costs, values, buf.episode_starts, last_values, np.asarray(self._last_episode_starts),
                                         self.gamma, self.gae_lambda)
        lam = float(self.multiplier_value())
        sigma = float(np.sqrt(self.env.ret_rms.var + self.env.epsilon)) if hasattr(self.env, "ret_rms") else 1.0
        buf.advantages = ((buf.advantages - lam * adv_c / sigma) / (1.0 + lam)).astype(np.float32)
        loss = self._fit_cost_critic(buf.observations.reshape(-1, buf.observations.shape[-1]), targets.reshape(-1))
        self.cost_log.append({"multiplier": lam, "cost_value_loss": loss, "mean_abs_cost_advantage": float(np.abs(adv_c).mean())})

    def _fit_cost_critic(self, obs: np.ndarray, targets: np.ndarray) -> float:
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        y = torch.as_tensor(targets, dtype=torch.float32, device=self.device)
        losses = []
        for _ in range(self.n_epochs):
            for idx in torch.randperm(len(x), device=self.device).split(self.batch_size):
                loss = nn.functional.mse_loss(self.cost_critic(x[idx]).squeeze(-1), y[idx])
                self.cost_optimizer.zero_grad()
                loss.backward()
                self.cost_optimizer.step()
                losses.append(float(loss.detach()))
        return float(np.mean(losses[-max(1, len(x) // self.batch_size):]))
