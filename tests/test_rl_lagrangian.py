"""PPO-Lagrangian (`embodied rl --cost-limit C`): the multiplier follows the episode costs, the penalty shapes the reward."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embodied.errors import ConfigError
from embodied.rl import LagrangeMultiplier, cost_penalty


def test_multiplier_rises_above_the_limit_and_falls_to_zero_below():
    m = LagrangeMultiplier(limit=2.0, lr=0.5)
    m.update()  # no finished episode: no step
    assert m.value == 0.0 and m.history == []
    for c in (4.0, 6.0):
        m.record(c)
    m.update()  # mean 5 > limit 2: + 0.5 * 3
    assert m.value == pytest.approx(1.5)
    m.record(0.0)
    m.update()  # 0 < 2: - 0.5 * 2
    assert m.value == pytest.approx(0.5)
    m.record(0.0)
    m.update()
    assert m.value == 0.0 and [h["episodes"] for h in m.history] == [2, 1, 1]
    with pytest.raises(ConfigError, match="cost-limit"):
        LagrangeMultiplier(limit=-1.0)


def test_adam_multiplier_steps_about_lr_whatever_the_cost_scale():
    for scale in (1.0, 1000.0):
        m = LagrangeMultiplier(limit=2.0, lr=0.1, optimizer="adam")
        m.record(2.0 + 3.0 * scale)
        m.update()
        assert m.value == pytest.approx(0.1)  # bias-corrected first step: lr x sign of the excess
        for _ in range(4):
            m.record(2.0 + 3.0 * scale)
            m.update()
        assert m.value == pytest.approx(0.5, rel=1e-3)  # a steady excess: lr per step, not lr x excess
    m = LagrangeMultiplier(limit=2.0, lr=0.1, optimizer="adam", value=0.5)
    for _ in range(40):  # below the limit: it falls back, at most about lr a step, and stays at zero
        before = m.value
        m.record(0.0)
        m.update()
        assert before - 0.1 - 1e-6 <= m.value <= before
    assert m.value == 0.0
    sgd = LagrangeMultiplier(limit=2.0, lr=0.1)
    sgd.record(3002.0)
    sgd.update()
    assert sgd.value == pytest.approx(300.0)  # the plain step scales with the excess
    with pytest.raises(ConfigError, match="lagrange-optimizer"):
        LagrangeMultiplier(limit=1.0, optimizer="rmsprop")


def test_cost_penalty_scales_the_reward_and_reports_episode_costs():
    from embodied.envs import make

    m = LagrangeMultiplier(limit=0.0, value=1.0)
    env = cost_penalty(make("embodied/PointReachHazard-v0", max_episode_steps=40), m)
    env.reset(seed=3)
    total, done, saw_cost = 0.0, False, False
    rng = np.random.default_rng(0)
    while not done:
        _, r, term, trunc, info = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        assert r == pytest.approx((info["unpenalized_reward"] - 1.0 * info["cost"]) / 2.0)
        total += info["cost"]
        saw_cost |= info["cost"] > 0
        done = term or trunc
    m.update()
    assert m.history[-1]["mean_episode_cost"] == pytest.approx(total) and saw_cost  # random actions break the speed limit
    env.close()


def test_an_episode_ended_by_a_reset_from_outside_still_reports_its_cost():
    from embodied.envs import make

    m = LagrangeMultiplier(limit=0.0, value=1.0)
    env = cost_penalty(make("embodied/PointReachHazard-v0", max_episode_steps=40), m)
    env.reset(seed=3)
    total = 0.0
    for _ in range(10):  # full speed breaks the speed limit; the episode is cut off long before its end
        _, _, term, trunc, info = env.step(np.array([1.0, 0.0], np.float32))
        total += info["cost"]
        assert not (term or trunc)
    env.reset(seed=4)  # what VecLearnedReward does where the model's success ends an episode
    env.reset(seed=5)  # no step since: nothing more to report
    m.update()
    assert total > 0 and m.history[-1]["mean_episode_cost"] == pytest.approx(total) and m.history[-1]["episodes"] == 1
    env.close()


def test_cli_rl_with_a_cost_limit_runs_ppo_lagrangian(tmp_path, capsys):
    from embodied.cli import main

    out = tmp_path / "lag"
    assert main(["rl", "--env", "embodied/PointReachHazard-v0", "--instruction", "touch the red cube", "--reward", "true", "--algo", "ppo",
                 "--steps", "600", "--envs", "2", "--episodes", "2", "--cost-limit", "0", "--lagrange-optimizer", "adam", "--out", str(out),
                 "--device", "cpu"]) == 0
    r = json.loads((out / "rl.json").read_text())
    g = r["lagrange"]
    assert g["cost_limit"] == 0.0 and g["optimizer"] == "adam" and g["updates"] and g["final_multiplier"] > 0  # episodes cost something, the limit is 0
    assert "mean_cost" in r["eval"] and "Lagrangian" in capsys.readouterr().out
    assert main(["rl", "--env", "embodied/PointReachHazard-v0", "--instruction", "touch the red cube", "--reward", "true",
                 "--cost-limit", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cost-limit >= 0" in err[0]


def test_cli_rl_turns_on_plain_language_constraints_and_refuses_unknown_ones(tmp_path, capsys):
    from embodied.cli import main
    from embodied.envs.constraints import parse_constraint
    from embodied.rl import RLSpec, make_env, Algorithm

    spec = RLSpec(env_id="embodied/PointReach-v0", instruction="touch the red cube", reward="true",
                  constraints=(parse_constraint("stay out of the blue zone"),))
    env = make_env(spec, None, Algorithm(), monitor=False)
    env.reset(seed=0)
    inner = env.unwrapped
    assert inner._hazard_colours == ["blue"] and list(inner._keep_out) == [0]  # the named zone is a keep-out zone now
    assert parse_constraint("stay out of the blue zone") in inner.constraints
    _, _, _, _, info = env.step(np.zeros(2, dtype=np.float32))
    assert "cost_hazard" in info and info["cost"] == 0.0  # cost at rest, outside the zone: none
    env.close()

    out = tmp_path / "zones"
    assert main(["rl", "--env", "embodied/PointReach-v0", "--instruction", "touch the red cube", "--reward", "true", "--steps", "600",
                 "--envs", "2", "--episodes", "2", "--constraint", "stay out of the blue zone", "--cost-limit", "1", "--out", str(out),
                 "--device", "cpu"]) == 0
    r = json.loads((out / "rl.json").read_text())
    assert r["spec"]["constraints"] == ["stay out of the blue zone"] and r["lagrange"]["cost_limit"] == 1.0
    capsys.readouterr()
    assert main(["rl", "--env", "embodied/PointReach-v0", "--instruction", "touch the red cube", "--constraint", "fly to the moon"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Closest supported" in err[0]


def test_ppo_starts_from_the_asked_exploration_scale_and_entropy_bonus(capsys):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from embodied.cli import main
    from embodied.rl import ALGORITHMS, RLSpec, make_env

    for log_std, ent in ((0.0, 0.0), (-1.0, 0.05)):
        spec = RLSpec(env_id="embodied/PointReachHazard-v0", instruction="touch the red cube", reward="true", log_std_init=log_std,
                      ent_coef=ent)
        algo = ALGORITHMS["ppo"]()
        venv = DummyVecEnv([lambda: make_env(spec, None, algo)])
        model = algo.build(venv, spec, "cpu")
        assert np.allclose(model.policy.log_std.detach().numpy(), log_std) and model.ent_coef == ent
        venv.close()
    assert main(["rl", "--env", "embodied/PointReachHazard-v0", "--instruction", "touch the red cube", "--reward", "true",
                 "--ent-coef", "-0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ent-coef must be >= 0" in err[0]


def test_actor_and_critic_take_the_asked_widths_and_the_algorithms_defaults_otherwise(capsys):
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv

    from embodied.cli import main
    from embodied.rl import ALGORITHMS, RLSpec, make_env

    def widths(net: torch.nn.Module) -> list[int]:
        return [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]

    for algo_name, arch, want in (("ppo", (), [64, 64]), ("ppo", (256, 128), [256, 128]), ("sac", (), [256, 256]), ("sac", (32,), [32])):
        spec = RLSpec(env_id="embodied/PointReach-v0", instruction="touch the red cube", reward="true", algo=algo_name, net_arch=arch)
        algo = ALGORITHMS[algo_name]()
        venv = DummyVecEnv([lambda: make_env(spec, None, algo)])
        policy = algo.build(venv, spec, "cpu").policy
        if algo_name == "ppo":
            actor, critic = policy.mlp_extractor.policy_net, policy.mlp_extractor.value_net
        else:
            actor, critic = policy.actor.latent_pi, policy.critic.qf0
        assert widths(actor) == want and widths(critic)[: len(want)] == want, (algo_name, arch)
        venv.close()
    assert main(["rl", "--env", "embodied/PointReach-v0", "--instruction", "touch the red cube", "--reward", "true",
                 "--net-arch", "64", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--net-arch takes one width >= 1" in err[0]


def test_annealed_limit_lets_the_task_come_first_then_tightens():
    m = LagrangeMultiplier(limit=5.0, lr=0.5, start=41.0, anneal=0.5)
    assert [m.limit_at(p) for p in (0.0, 0.25, 0.5, 0.9)] == pytest.approx([41.0, 23.0, 5.0, 5.0])
    m.record(20.0)
    m.update(progress=0.0)  # 20 < 41 at the start: the penalty stays off
    assert m.value == 0.0 and m.history[-1]["limit"] == 41.0
    m.record(20.0)
    m.update(progress=0.75)  # the same cost once the limit has reached 5: + 0.5 * 15
    assert m.value == pytest.approx(7.5) and m.history[-1]["limit"] == 5.0
    plain = LagrangeMultiplier(limit=5.0, lr=0.5)
    assert plain.limit_at(0.0) == plain.limit_at(1.0) == 5.0
    with pytest.raises(ConfigError, match="cost-limit-anneal"):
        LagrangeMultiplier(limit=5.0, start=40.0, anneal=0.0)
    with pytest.raises(ConfigError, match="cost-limit-start"):
        LagrangeMultiplier(limit=5.0, start=-1.0)


def test_cli_rl_anneals_the_limit_and_refuses_a_start_without_a_limit(tmp_path, capsys):
    from embodied.cli import main

    out = tmp_path / "anneal"
    assert main(["rl", "--env", "embodied/PointReachHazard-v0", "--instruction", "touch the red cube", "--reward", "true", "--steps", "1024",
                 "--envs", "2", "--episodes", "2", "--cost-limit", "0", "--cost-limit-start", "100", "--cost-limit-anneal", "1",
                 "--out", str(out), "--device", "cpu"]) == 0
    g = json.loads((out / "rl.json").read_text())["lagrange"]
    limits = [u["limit"] for u in g["updates"]]
    assert g["cost_limit_start"] == 100.0 and len(limits) == 2 and 0.0 <= limits[1] < limits[0] < 100.0  # it falls with the steps
    assert "annealed from 100" in capsys.readouterr().out
    assert main(["rl", "--env", "embodied/PointReachHazard-v0", "--instruction", "touch the red cube", "--reward", "true",
                 "--cost-limit-start", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "add --cost-limit" in err[0]


def test_cli_rl_runs_on_the_asked_torch_threads_and_restores_the_callers(tmp_path, capsys):
    """Two runs side by side on 2 cores, each on torch's 2 threads, ran 5x slower than on 1 (BENCHMARKS.md)."""
    import torch

    from embodied.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = tmp_path / "threads"
        assert main(["rl", "--env", "embodied/PointReach-v0", "--instruction", "touch the red cube", "--reward", "true", "--steps", "512",
                     "--envs", "2", "--episodes", "1", "--threads", "1", "--out", str(out), "--device", "cpu"]) == 0
        r = json.loads((out / "rl.json").read_text())
        assert r["torch_threads"] == 1 and r["spec"]["threads"] == 1 and torch.get_num_threads() == 2
        capsys.readouterr()
        assert main(["rl", "--env", "embodied/PointReach-v0", "--instruction", "touch the red cube", "--reward", "true", "--threads", "-1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--threads must be >= 0" in err[0]
    finally:
        torch.set_num_threads(before)


def test_training_curve_reports_the_true_return_and_the_cost_not_the_penalised_reward(monkeypatch, tmp_path):
    """Before PPO's first update both runs act with the same initial policy on the same seeds, so their first logged
    episodes are the same ones: a curve that logged the penalised reward would differ by the penalty."""
    import embodied.rl as rl

    def heavy(spec):  # a multiplier that starts (and stays about) at 50
        return LagrangeMultiplier(spec.cost_limit, 1e-6, value=50.0)

    monkeypatch.setattr(rl, "multiplier_of", heavy)
    base = dict(env_id="embodied/PointReachHazard-v0", instruction="touch the red cube", reward="true", steps=512, n_envs=2,
                episodes=1, device="cpu")
    plain = rl._train_rl(rl.RLSpec(**base), tmp_path / "plain", None, None)["curve"][0]
    penalised = rl._train_rl(rl.RLSpec(**base, cost_limit=0.0), tmp_path / "lag", None, None)["curve"][0]
    assert plain["steps"] == penalised["steps"] <= 512 and plain["episodes"] == penalised["episodes"]
    assert penalised["mean_episode_cost"] > 1.0  # the speed limit is broken at most steps of a random policy
    assert penalised["true_return"] == pytest.approx(plain["true_return"])
    assert penalised["mean_episode_cost"] == pytest.approx(plain["mean_episode_cost"])


def test_squashed_ppo_acts_through_tanh_in_training_and_evaluation(tmp_path, capsys):
    """A Gaussian clipped to the bounds stops steering once its mean is past them; through tanh every mean moves the action."""
    from embodied.cli import main
    from embodied.envs import FixedTask, make
    from embodied.rl import ALGORITHMS, RLSpec, StatePolicy, action_view, make_env

    spec = RLSpec(env_id="embodied/PointReachHazard-v0", instruction="touch the red cube", reward="true", squash=True, task_first=False)
    env = make_env(spec, None, ALGORITHMS["ppo"](), monitor=False)
    raw = FixedTask(make(spec.env_id), spec.instruction)
    assert (env.action_space.high == 5.0).all() and action_view(RLSpec(**{**spec.__dict__, "squash": False}), raw.action_space) is None
    rng = np.random.default_rng(0)
    env.reset(seed=3)
    raw.reset(seed=3)
    for _ in range(10):
        u = rng.normal(0, 3, 2).astype(np.float32)
        got, want = env.step(u)[0], raw.step(np.tanh(u))[0]["state"]
        assert np.allclose(got, want, atol=1e-5)  # the env moved by tanh(u), not by the clipped u
    far = env.step(np.array([50.0, -50.0], np.float32))[4]
    assert far["cost_speed"] in (0.0, 1.0)
    act = action_view(spec, raw.action_space)
    assert np.allclose(act(np.array([[0.5, 8.0]])), [[np.tanh(0.5), 1.0]], atol=1e-6)

    class Fixed:
        def predict(self, obs, deterministic=True):
            return np.full((len(obs), 2), 0.5, np.float32), None

    a, _ = StatePolicy(Fixed(), lambda s: s, None, act).predict({"state": np.zeros(raw.observation_space["state"].shape, np.float32)})  # type: ignore[arg-type]
    assert np.allclose(a, np.tanh(0.5))
    out = tmp_path / "squash"
    assert main(["rl", "--env", spec.env_id, "--instruction", spec.instruction, "--reward", "true", "--steps", "512", "--envs", "2",
                 "--episodes", "1", "--squash", "--out", str(out), "--device", "cpu"]) == 0
    r = json.loads((out / "rl.json").read_text())
    assert r["spec"]["squash"] is True and 0.0 <= r["eval"]["saturated_actions"] <= 1.0
    capsys.readouterr()
    assert main(["rl", "--env", spec.env_id, "--instruction", spec.instruction, "--reward", "true", "--algo", "sac", "--squash"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--squash is for ppo" in err[0]
    for e in (env, raw):
        e.close()


@pytest.mark.parametrize("squash, bias, expect", [(False, 0.5, 0.0), (False, 3.0, 1.0), (True, 1.5, 0.0), (True, 2.5, 1.0)])
def test_saturated_actions_are_where_the_env_stops_following_the_mean(squash, bias, expect):
    """Clipped: a mean past the bounds moves nothing; squashed: tanh's slope is under 0.1 past |u| = 1.82."""
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv

    from embodied.rl import ALGORITHMS, RLSpec, StatePolicy, action_view, evaluate_rl, make_env, state_view

    spec = RLSpec(env_id="embodied/PointReach-v0", instruction="touch the red cube", reward="true", n_envs=1, episodes=2,
                  squash=squash, terminate_on_success=True)
    algo = ALGORITHMS["ppo"]()
    venv = DummyVecEnv([lambda: make_env(spec, None, algo)])
    model = algo.build(venv, spec, "cpu")
    with torch.no_grad():
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.fill_(bias)
    policy = StatePolicy(model, lambda s: s, state_view(spec), action_view(spec, venv.envs[0].unwrapped.action_space))
    assert np.allclose(policy.mean_actions(np.zeros((3, venv.observation_space.shape[0]), np.float32)), bias)
    r = evaluate_rl(spec, policy)
    assert r["eval"]["saturated_actions"] == expect
    venv.close()


def test_cost_margin_counts_the_steps_near_a_keep_out_zone_for_the_lagrangian_only():
    from embodied.envs import FixedTask, make
    from embodied.envs.constraints import _SL, parse_constraint

    cs = (parse_constraint("stay out of the blue zone"), parse_constraint("stay out of the yellow zone"))
    m = LagrangeMultiplier(limit=0.1)
    env = cost_penalty(FixedTask(make("embodied/PointReach-v0", constraints=cs), "touch the red cube"), m, margin=0.05)
    rng = np.random.default_rng(0)
    near_only = inside = 0
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        zones = obs["state"][_SL["hazards"]].reshape(-1, 7)
        zones = zones[zones[:, 6] > 0.5]
        done, total = False, 0.0
        while not done:
            to_zone = zones[0, :2] - obs["state"][_SL["ee_pos"]]  # wander towards a zone: through its margin, then in
            obs, _, term, trunc, info = env.step(np.clip(to_zone / 0.05 + rng.normal(0, 0.5, size=2), -1, 1))
            done = term or trunc
            d = np.linalg.norm(zones[:, :2] - obs["state"][_SL["ee_pos"]], axis=1).min()
            assert info["cost"] == float(d < 0.07) and info["lagrangian_cost"] == float(d < 0.07 + 0.05)
            near_only += info["lagrangian_cost"] > info["cost"]
            inside += info["cost"] > 0
            total += info["lagrangian_cost"]
        assert m._costs[-1] == total  # the multiplier follows the conservative cost
    assert near_only > 0 and inside > 0
