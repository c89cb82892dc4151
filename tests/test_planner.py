"""The planner: CEM and MPPI find a known optimum, the policy acts validly and beats random candidates in
imagination, lockstep rollouts, `embodied eval --policy plan` and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embodied import specs
from embodied.cli import main
from embodied.config import PLANNER_NAMES, PlanConfig
from embodied.envs import make
from embodied.errors import ConfigError
from embodied.evaluate import run_episodes
from embodied.policies import PLANNERS, PlannerPolicy
from embodied.policies.dynamics import Imagined
from embodied.policies.planner import make_search, plan


class _Bowl:
    """A stand-in dynamics model whose imagined reward is -(a - target)^2 per step and action dimension."""

    target = torch.tensor([0.6, -0.3])

    def imagine(self, ctx, actions, per_context=None):
        r = -(actions - self.target).pow(2).sum(-1)  # (N, H)
        zero = torch.zeros_like(r)
        return Imagined(state=actions.new_zeros(*actions.shape[:2], specs.STATE_DIM), reward=r, cost=zero, success=zero)


def test_the_registry_and_the_config_list_the_same_planners():
    assert set(PLANNERS) == set(PLANNER_NAMES)
    with pytest.raises(ConfigError, match="unknown planner"):
        make_search(PlanConfig(planner="nope"))
    with pytest.raises(ConfigError, match="horizon"):
        PlanConfig(horizon=0)


@pytest.mark.parametrize("name", sorted(PLANNER_NAMES))
def test_search_finds_the_optimum_of_a_known_objective(name):
    cfg = PlanConfig(planner=name, horizon=3, population=256, iterations=8, init_std=0.5, temperature=0.05)
    mean, trace = plan(_Bowl(), None, cfg, torch.zeros(2, 3, 2), torch.Generator().manual_seed(0))  # two searches at once
    assert mean.shape == (2, 3, 2) and mean.abs().max() <= 1
    assert torch.allclose(mean, _Bowl.target.expand(2, 3, 2), atol=0.12), mean
    assert (trace["final_mean"] > trace["first_mean"]).all() and (trace["final_mean"] > -0.05 * 3).all()


def test_planner_acts_validly_and_beats_random_candidates_in_imagination(tiny_run):
    policy = PlannerPolicy.load(tiny_run, PlanConfig(horizon=4, population=16, iterations=2), device="cpu")
    env = make("embodied/PointReach-v0")
    obs, _ = env.reset(seed=specs.eval_seeds(1)[0])
    for _ in range(4):
        a, _ = policy.predict(obs)
        assert a.shape == (2,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
        (trace,) = policy.last_trace
        # the executed plan scores above the average random candidate of the first iteration, under the model's own heads
        assert trace["final_mean"] >= trace["first_mean"]
        np.testing.assert_allclose(policy.policy._episodes[0].last_action[0].numpy(), a)  # fed back next step
        obs, *_ = env.step(a)
    env.close()
    # the same seeds give the same actions after reset (the noise restarts from its seed)
    policy.reset()
    obs, _ = env.reset(seed=specs.eval_seeds(1)[0])
    first, _ = policy.predict(obs)
    policy.reset()
    again, _ = policy.predict(obs)
    np.testing.assert_array_equal(first, again)


def test_planner_in_lockstep_rollouts(tiny_run):
    policy = PlannerPolicy.load(tiny_run, PlanConfig(planner="mppi", horizon=3, population=8, iterations=1), device="cpu")
    envs = [make("embodied/PointReach-v0", max_episode_steps=5) for _ in range(2)]
    runs = run_episodes(envs, policy, specs.eval_seeds(3))
    for env in envs:
        env.close()
    assert len(runs) == 3 and all(1 <= r["length"] <= 5 and not r["invalid"] for r in runs)


def test_cli_eval_with_the_planner_and_its_errors(tiny_run, tmp_path, capsys):
    run = str(tiny_run)
    out = tmp_path / "eval"
    assert main(["eval", "--ckpt", run, "--env", "embodied/PointReach-v0", "--episodes", "2", "--envs", "2", "--policy", "plan",
                 "--planner", "mppi", "--horizon", "3", "--population", "8", "--iterations", "1", "--json", "--out", str(out)]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["episodes"] == 2
    saved = json.loads((out / "eval.json").read_text())
    assert saved["policy"]["policy"] == "plan" and saved["policy"]["planner"] == "mppi" and saved["policy"]["horizon"] == 3
    assert main(["eval", "--ckpt", run, "--env", "embodied/PointReach-v0", "--episodes", "1", "--envs", "1", "--json", "--out", str(out)]) == 0
    capsys.readouterr()
    assert json.loads((out / "eval.json").read_text())["policy"] == "direct"
    assert main(["eval", "--ckpt", run, "--policy", "plan", "--population", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--population must be >= 1" in err


class _Uniform:
    """Uniformly random actions (SB3 protocol), the floor a planner must beat."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        n = len(observation["state"]) if np.ndim(observation["state"]) == 2 else None
        a = self.rng.uniform(-1, 1, size=(n, 2) if n else (2,)).astype(np.float32)
        return a, None


@pytest.mark.slow
def test_planning_on_briefly_trained_tiny_models_beats_random_actions(tmp_path):
    """PointReach: the planner (without the policy's prior, so only imagination and the reward head steer it)
    earns a higher return than uniformly random actions on the same evaluation seeds, for each of three models
    (weights, sampler and data seeds 0, 1, 2), and by more than 1.0 on average. Before the trajectory token read the
    objects' displacement (moved_readout) this failed: the reward head did not rank candidates (imagined vs true
    return correlation about -0.2). Now the margins are 2.6, 0.3 and 0.9: it ranks them, weakly."""
    from embodied.collect import CollectSpec, collect
    from embodied.config import TrainConfig, TrainRunConfig
    from embodied.training_data import train_from_stores

    seeds = specs.eval_seeds(6)
    envs = [make("embodied/PointReach-v0", max_episode_steps=30) for _ in range(3)]
    mean_random = float(np.mean([r["return"] for r in run_episodes(envs, _Uniform(), seeds)]))
    margins = []
    for seed in range(3):
        store, run = str(tmp_path / f"d{seed}.zarr"), tmp_path / f"run{seed}"
        collect(CollectSpec(out=store, env_ids=("embodied/PointReach-v0",), episodes=120, policy="noisy:1.0", seed=seed), progress=False)
        train_from_stores(TrainRunConfig(data=(store,), out=str(run), preset="tiny", workers=0, holdout=0.0, imitate="all"),
                          TrainConfig(steps=600, batch_size=32, window=8, lr=2e-3, warmup=20, save_every=600, seed=seed), progress=False)
        planner = PlannerPolicy.load(run, PlanConfig(horizon=5, population=32, iterations=2, prior=False), device="cpu")
        margins.append(float(np.mean([r["return"] for r in run_episodes(envs, planner, seeds)])) - mean_random)
    for env in envs:
        env.close()
    assert min(margins) > 0 and np.mean(margins) > 1.0, margins
