"""The model as a reward function: score, the LearnedReward wrapper, the validation metrics and `embodied rl`."""

from __future__ import annotations

import json
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from embodied import specs
from embodied.bench_reward import average_ranks, reward_metrics, roc_auc, spearman
from embodied.config import preset
from embodied.envs import FixedTask, ScriptedExpert, StateOnly, make
from embodied.errors import ConfigError
from embodied.model import TrajectoryModel
from embodied.policies import LearnedReward, RewardModel
from conftest import fake_encode as _fake_encode


@pytest.fixture(scope="module")
def reward_model():
    torch.manual_seed(0)
    model = TrajectoryModel(preset("tiny", context=8))
    for p in model.outcome_head.parameters():  # large enough outputs that a mismatch would show
        torch.nn.init.normal_(p, std=0.5)
    model.set_normalizer(torch.zeros(model.cfg.state_dim), torch.ones(model.cfg.state_dim), reward_mean=-1.5, reward_std=3.0)
    return RewardModel(model, _fake_encode, device="cpu")


def _expert_episode(env_id="embodied/PointPushZone-v0", seed=0, noise=0.5):
    env = make(env_id)
    obs, _ = env.reset(seed=seed)
    expert = ScriptedExpert(env, noise=noise, seed=seed)
    states, actions, rewards, done = [obs["state"]], [], [], False
    while not done:
        a, _ = expert.predict(obs)
        obs, r, term, trunc, _ = env.step(a)
        states.append(obs["state"])
        actions.append(a)
        rewards.append(r)
        done = term or trunc
    instruction = obs["instruction"]
    env.close()
    return np.stack(states), np.stack(actions), np.asarray(rewards), instruction


def test_score_agrees_with_the_models_outcome_heads(reward_model):
    states, actions, _, instruction = _expert_episode()
    T = reward_model.model.cfg.context  # a full forward pass sees at most the context
    s = reward_model.score(states[: T + 1], actions[:T], instruction)
    assert s.reward.shape == s.success.shape == s.cost.shape == (T,)
    batch = {"state": torch.as_tensor(states[None, :T]), "action": torch.as_tensor(actions[None, :T]),
             "timestep": torch.arange(T)[None], "mask": torch.ones(1, T, dtype=torch.bool)}
    m = reward_model.model
    with torch.no_grad():
        o = m.outcomes(m(batch, reward_model.goal([instruction]))["h_act"])
    np.testing.assert_allclose(s.reward, (o["reward"][0] * 3.0 - 1.5).numpy(), atol=1e-4)
    np.testing.assert_allclose(s.success, torch.sigmoid(o["success_logit"][0]).numpy(), atol=1e-5)
    np.testing.assert_allclose(s.cost, torch.sigmoid(o["cost_logit"][0]).numpy(), atol=1e-5)
    assert np.all((s.success > 0) & (s.success < 1)) and np.std(s.reward) > 0
    # the instruction matters: another goal gives other scores
    other = reward_model.score(states[: T + 1], actions[:T], "push the blue ball to the left")
    assert not np.allclose(other.reward, s.reward)


def _hindsight(reward_model, on=True):
    """The fixture's weights, read in hindsight (``ModelConfig.reward_hindsight``) or not."""
    model = TrajectoryModel(replace(reward_model.model.cfg, reward_hindsight=on))
    model.load_state_dict(reward_model.model.state_dict())
    return RewardModel(model, _fake_encode, device="cpu")


def test_a_hindsight_models_score_is_its_heads_at_the_observations_the_actions_led_to(reward_model):
    hind = _hindsight(reward_model)
    states, actions, _, instruction = _expert_episode()
    T = hind.model.cfg.context - 1  # T actions, T + 1 observations: a full forward pass holds them all
    s = hind.score(states[: T + 1], actions[:T], instruction)
    batch = {"state": torch.as_tensor(states[None, : T + 1]), "action": torch.as_tensor(actions[None, : T + 1]),
             "timestep": torch.arange(T + 1)[None], "mask": torch.ones(1, T + 1, dtype=torch.bool)}
    m = hind.model
    with torch.no_grad():
        o = m.outcomes(m(batch, hind.goal([instruction]))["h_obs"][:, 1:])
    np.testing.assert_allclose(s.reward, (o["reward"][0] * 3.0 - 1.5).numpy(), atol=1e-4)
    np.testing.assert_allclose(s.success, torch.sigmoid(o["success_logit"][0]).numpy(), atol=1e-5)
    np.testing.assert_allclose(s.cost, torch.sigmoid(o["cost_logit"][0]).numpy(), atol=1e-5)
    assert not np.allclose(s.reward, reward_model.score(states[: T + 1], actions[:T], instruction).reward)


@pytest.mark.parametrize("hindsight", [False, True])
def test_imagined_outcomes_are_the_scores_of_the_imagined_states(reward_model, hindsight):
    """``imagine`` reads reward and success where scoring the trajectory it imagined would (foresight or hindsight)."""
    rm = _hindsight(reward_model, hindsight)
    m = rm.model
    states, actions, _, instruction = _expert_episode()
    H = m.cfg.context  # a hindsight model's last reading is one observation past the context: the oldest step drops out
    with torch.no_grad():
        im = m.imagine(m.start(rm.goal([instruction])), torch.as_tensor(states[:1]), torch.tensor([0]), torch.as_tensor(actions[None, :H]))
    s = rm.score(np.concatenate([states[:1], im["state"][0].numpy()]), actions[:H], instruction)
    np.testing.assert_allclose(im["reward"][0].numpy(), s.reward, atol=1e-4)
    np.testing.assert_allclose(im["success"][0].numpy(), s.success, atol=1e-5)
    np.testing.assert_allclose(im["cost"][0].numpy(), s.cost, atol=1e-5)


def test_score_batch_matches_single_trajectories_beyond_the_context(reward_model):
    a = _expert_episode(seed=1)
    b = _expert_episode(env_id="embodied/PointPushDir-v0", seed=2)
    assert len(a[1]) > reward_model.model.cfg.context and len(a[1]) != len(b[1])
    both = reward_model.score_batch([(a[0], a[1], a[3]), ({"state": b[0][:-1]}, b[1], b[3])])
    for (states, actions, _, instr), s in zip((a, b), both):
        single = reward_model.score(states, actions, instr)
        assert s.reward.shape == (len(actions),)
        np.testing.assert_allclose(s.reward, single.reward, atol=1e-4)
        np.testing.assert_allclose(s.success, single.success, atol=1e-5)


def test_score_refuses_mismatched_shapes(reward_model):
    states, actions, _, instr = _expert_episode()
    with pytest.raises(ConfigError, match="observations"):
        reward_model.score(states[:3], actions[:10], instr)
    with pytest.raises(ConfigError, match=r"\(T, A\)"):
        reward_model.score(states, actions[:, 0], instr)


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
def test_learned_reward_wrapper_passes_check_env_and_keeps_the_true_reward(reward_model):
    instruction = "push the red cube into the green zone"
    env = LearnedReward(FixedTask(make("embodied/PointPushZone-v0"), instruction), reward_model, instruction)
    check_env(env, skip_render_check=True)
    plain = FixedTask(make("embodied/PointPushZone-v0"), instruction)
    obs, _ = env.reset(seed=3)
    plain.reset(seed=3)
    assert obs["instruction"] == instruction
    expert = ScriptedExpert(env, noise=0.3, seed=0)
    states, actions, rewards, true = [obs["state"]], [], [], []
    for _ in range(20):  # longer than the context: the cache drops old timesteps
        a, _ = expert.predict(obs)
        obs, r, term, trunc, info = env.step(a)
        _, r_true, *_, info_true = plain.step(a)
        assert info["true_reward"] == pytest.approx(r_true)
        assert info["is_success"] == info_true["is_success"] and info["reward_goal"] == info_true["reward_goal"]
        assert 0 < info["learned_success"] < 1 and 0 < info["learned_cost"] < 1
        states.append(obs["state"])
        actions.append(a)
        rewards.append(r)
        true.append(r_true)
        if term or trunc:
            break
    assert not np.allclose(rewards, true)  # the reward is the model's, not the env's
    offline = reward_model.score(np.stack(states), np.stack(actions), instruction)
    np.testing.assert_allclose(rewards, offline.reward, atol=1e-4)  # online steps = offline score
    with pytest.raises(ConfigError, match="dict observations"):
        LearnedReward(StateOnly(make("embodied/PointPushZone-v0")), reward_model)


def test_fixed_task_sets_up_the_named_task_and_refuses_bad_instructions():
    env = FixedTask(make("embodied/PointPushDir-v0"), "push the blue ball to the left")
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        task = env.unwrapped.task
        assert (task["colour"], task["shape"], task["direction"]) == ("blue", "ball", "left")
        assert obs["instruction"] == "push the blue ball to the left"
    with pytest.raises(ConfigError, match="push_zone task"):
        FixedTask(make("embodied/PointPushDir-v0"), "push the red cube into the green zone")
    with pytest.raises(ConfigError, match="no object"):
        FixedTask(make("embodied/PointPushDir-v0"), "dance a little")


def test_auc_and_spearman_on_constructed_cases():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.2, 0.9, 0.95]), np.array([0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5  # a tie counts half
    assert roc_auc(np.array([0.1, 0.2]), np.array([1, 1])) is None
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    x = np.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0) and spearman(x, -np.exp(x)) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 2, 3, 4, 5]), np.array([5.0, 6, 7, 8, 7])) == pytest.approx(0.8208, abs=1e-4)
    assert spearman(x, np.ones(10)) is None


def test_reward_metrics_find_the_hacking_episodes():
    def ep(success, p_max, seed):
        T, sign = 5, 1 if success else -1
        return {"env_id": "e", "instructions": "seen", "noise": 1.0, "seed": seed, "instruction": "i", "invalid": False,
                "success": success, "reward": np.linspace(0, 1, T) + sign * seed, "learned_reward": np.linspace(0, 2, T) + sign * seed,
                "learned_success": np.array([0.0, 0.1, p_max, 0.1, 0.0]), "action": np.zeros((T, 2))}

    eps = [ep(True, 0.9, 0), ep(True, 0.8, 1), ep(False, 0.2, 2), ep(False, 0.85, 3)]
    m = reward_metrics(eps, hack_threshold=0.5)
    assert m["success_auc_max"] == pytest.approx(0.75)  # the 0.85 failure outranks one of the two successes
    assert m["success_auc_final"] == pytest.approx(0.5)  # every episode ends at 0.0: the final step tells nothing here
    from embodied.bench_reward import missed_targets  # the target is judged on the final step's probability

    fine, poor = {**m, "success_auc_max": 0.5, "success_auc_final": 0.97}, {**m, "success_auc_max": 0.99, "success_auc_final": 0.9}
    assert missed_targets({"seen": fine, "paraphrase": fine}) == []
    assert missed_targets({"seen": fine, "paraphrase": poor}) == ["paraphrase instructions: final-step success AUC 0.9 < 0.95"]
    assert m["hacking_episodes"] == 1 and m["hacking_examples"][0]["seed"] == 3
    assert m["reward_spearman_step"] == pytest.approx(spearman(np.concatenate([e["learned_reward"] for e in eps]),
                                                               np.concatenate([e["reward"] for e in eps])))
    assert m["return_spearman"] == pytest.approx(1.0)
    # a failure the model pays like a solved episode counts too, whatever its success probability
    eps.append({**ep(False, 0.1, 4), "learned_reward": np.full(5, 10.0)})
    m = reward_metrics(eps, hack_threshold=0.5)
    assert m["hacking_episodes"] == 2 and m["hacking_examples"][0]["seed"] == 4
    assert reward_metrics(eps, hack_threshold=0.5, reward_level=100.0)["hacking_episodes"] == 1


def test_episode_end_says_where_the_success_threshold_would_end_solved_episodes():
    from embodied.bench_reward import episode_end

    def ep(p, success=True):
        return {"success": success, "invalid": False, "learned_success": np.array(p)}

    eps = [ep([0.1, 0.2, 0.9]), ep([0.1, 0.7, 0.2, 0.3, 0.9]), ep([0.6, 0.1, 0.1, 0.1]), ep([0.1, 0.2]), ep([0.9, 0.9], success=False)]
    m = episode_end(eps, 0.5)  # on time; 3 steps early; 3 steps early; never; the failure does not count
    assert m["solved_episodes"] == 4 and m["on_time"] == 0.25 and m["early"] == 0.5 and m["never"] == 0.25 and m["median_lead"] == 3
    m = episode_end(eps, 0.8)
    assert m["on_time"] == 0.5 and m["early"] == 0.0 and m["never"] == 0.5


def test_wrong_instruction_asks_the_same_object_for_something_else():
    from embodied.bench_reward import wrong_instruction
    from embodied.envs.instructions import parse_instruction

    for text in ("push the red cube to the right", "slide the red cube into the green zone", "touch the blue ball"):
        own = parse_instruction(text)
        wrong = [parse_instruction(wrong_instruction(text, k)) for k in range(3)]
        assert all(w.family == own.family and w != own and w.shape == own.shape for w in wrong)
        assert len(set(wrong)) == 3  # k walks through the alternatives
        if own.family != "reach":
            assert all(w.colour == own.colour for w in wrong)
    assert wrong_instruction("dance a little jig", 0) is None


def test_wrong_instruction_metrics_catch_a_success_head_that_ignores_the_direction():
    from embodied.bench_reward import wrong_instruction_metrics

    class Scores:
        def __init__(self, reads: bool):
            self.reads = reads

        def score_batch(self, trajs):
            from types import SimpleNamespace

            out = []
            for _, action, instruction in trajs:
                p = 0.9 if (not self.reads or "right" in instruction) else 0.1
                out.append(SimpleNamespace(reward=np.zeros(len(action)), success=np.full(len(action), p), cost=np.zeros(len(action))))
            return out

    eps = [{"env_id": "embodied/PointPushDir-v0", "instruction": "push the red cube to the right", "success": True, "invalid": False,
            "state": np.zeros((4, 3)), "action": np.zeros((3, 2)), "learned_success": np.full(3, 0.9)} for _ in range(4)]
    eps.append({**eps[0], "success": False})  # failures are not rescored
    blind, reading = wrong_instruction_metrics(Scores(False), eps), wrong_instruction_metrics(Scores(True), eps)
    assert blind["episodes"] == reading["episodes"] == 4
    assert blind["auc"] == pytest.approx(0.5) and blind["believed_solved"] == 1.0
    assert reading["auc"] == 1.0 and reading["believed_solved"] == 0.0 and reading["mean_p"] == pytest.approx(0.1)
    assert reading["per_env"]["embodied/PointPushDir-v0"]["auc"] == 1.0
    assert eps[0]["instruction"] == "push the red cube to the right"  # the episodes themselves are left alone


def test_bench_reward_end_to_end_reports_every_measure(tiny_run):
    from embodied.bench_reward import bench_reward, format_result

    r = bench_reward(str(tiny_run), ["embodied/PointPushDir-v0"], episodes=2, noises=(0.0,), device="cpu")
    assert r["all"]["episodes"] == 4 and r["seen"]["episodes"] == r["paraphrase"]["episodes"] == 2
    solved_seen = r["seen"]["true_successes"]
    assert solved_seen >= 1 and r["wrong_instruction"]["episodes"] == solved_seen  # the expert solves; each rescored once
    assert set(r["wrong_instruction"]["per_env"]) == {"embodied/PointPushDir-v0"}
    text = format_result(r)
    assert "wrong instruction" in text and "seen" in text


@pytest.mark.parametrize(
    "args, needle",
    [
        (["rl", "--env", "embodied/PointPushDr-v0", "--instruction", "push the red cube to the left", "--reward", "true"], "closest: embodied/PointPushDir-v0"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "paint the sky", "--reward", "true"], "names no object"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "push the red cube into the green zone", "--reward", "true"], "pick a push_zone env"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "push the red cube to the left"], "needs the reward model"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "push the red cube to the left", "--algo", "dqn"], "unknown algorithm 'dqn'"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "push the red cube to the left", "--reward", "magic"], "unknown reward 'magic'"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "push the red cube to the left", "--reward", "true",
          "--success-threshold", "1.5"], "--success-threshold"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "push the red cube to the left", "--reward", "true",
          "--terminate-on-success", "--success-bonus", "10"], "--success-bonus"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "push the red cube to the left", "--reward", "true",
          "--reward-ceiling", "0"], "--reward-ceiling"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "push the red cube to the left", "--reward", "true",
          "--shaping", "-1"], "--shaping"),
        (["bench", "reward", "--ckpt", "nowhere/run"], "no checkpoint at nowhere/run"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "push the red cube to the left", "--reward", "true",
          "--disagreement", "1"], "--disagreement"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "push the red cube to the left", "--reward", "true",
          "--success-disagreement", "1"], "--success-disagreement"),
        (["rl", "--env", "embodied/PointPushDir-v0", "--instruction", "push the red cube to the left", "--reward", "true",
          "--ensemble", "nowhere/r2"], "no checkpoint at nowhere/r2"),
    ],
)
def test_rl_and_bench_reward_bad_input_one_line_exit_2(args, needle, capsys):
    from embodied.cli import main

    assert main(args) == 2  # an unexpected exception would escape main and fail the test with its traceback
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize("ensemble", [False, True])
def test_rl_smoke_on_the_learned_reward(tiny_run, tmp_path, ensemble):
    from embodied.cli import main

    out = tmp_path / "rl"
    extra = (["--ensemble", str(tiny_run), "--disagreement", "1.5", "--success-disagreement", "1"] if ensemble  # the model twice: no spread, same run
             else ["--terminate-on-success", "--success-threshold", "0.7", "--shaping", "10"])
    assert main(["rl", "--env", "embodied/PointReach-v0", "--instruction", "touch the red cube", "--reward", "learned", "--ckpt", str(tiny_run),
                 "--algo", "ppo", "--steps", "300", "--envs", "2", "--episodes", "3", "--out", str(out), "--device", "cpu", *extra]) == 0
    r = json.loads((out / "rl.json").read_text())
    assert r["spec"]["reward"] == "learned" and r["eval"]["episodes"] == 3
    assert r["spec"]["ensemble"] == ([str(tiny_run)] if ensemble else []) and r["spec"]["disagreement"] == (1.5 if ensemble else 0.0)
    assert r["spec"]["success_disagreement"] == (1.0 if ensemble else 0.0)
    assert r["spec"]["shaping"] == (0.0 if ensemble else 10.0)
    lo, hi = r["eval"]["success_ci"]
    assert 0 <= lo <= r["eval"]["success"] <= hi <= 1
    assert r["reward_check"]["episodes"] == 3 and "hacking_episodes" in r["reward_check"]
    # the check calls an episode believed solved where the run's model would have ended it
    assert r["reward_check"]["hack_threshold"] == r["reward_check"]["episode_end"]["threshold"] == (0.5 if ensemble else 0.7)
    assert (out / "policy.safetensors").stat().st_size > 1000
    assert len(r["obs_normalizer"]["mean"]) == specs.STATE_DIM

    from embodied.rl import evaluate_rl, load_rl_policy

    policy, spec = load_rl_policy(out)  # a learned-reward run loads back without its reward model
    assert spec.reward == "learned" and spec.reward_ckpt == str(tiny_run)
    again = evaluate_rl(spec, policy)["eval"]
    assert again["mean_return"] == pytest.approx(r["eval"]["mean_return"]) and again["success"] == r["eval"]["success"]


def test_terminate_on_success_ends_a_learned_run_by_the_model_not_the_env(tiny_run):
    from embodied.policies import RewardModel
    from embodied.policies.vec_reward import VecLearnedReward
    from embodied.rl import ALGORITHMS, REWARDS, RLSpec, make_env

    rm = RewardModel.load(tiny_run, device="cpu")
    for reward, env_ends in (("true", True), ("learned", False)):
        spec = RLSpec(env_id="embodied/PointReach-v0", instruction="touch the red cube", reward=reward, terminate_on_success=True,
                      success_threshold=0.7)
        env = make_env(spec, rm, ALGORITHMS["ppo"]())
        assert env.unwrapped.terminate_on_success is env_ends
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = REWARDS["learned"]().wrap_vec(DummyVecEnv([lambda: make_env(spec, rm, ALGORITHMS["ppo"]())]), spec, rm)
    assert isinstance(venv, VecLearnedReward) and venv.end_on_success == 0.7


def test_a_learned_run_settles_the_bonus_its_model_learned_apart():
    from dataclasses import replace

    from embodied.rl import RLSpec, settled_bonus

    spec = RLSpec(env_id="embodied/PointPushDir-v0", instruction="push the red cube to the right", reward="learned", terminate_on_success=True)
    assert settled_bonus(spec, 10.0) == 10.0  # the model's reward head left out 10: pay it where its success ends an episode
    assert settled_bonus(replace(spec, success_bonus=5.0), 10.0) == 5.0  # what the user asks for wins
    assert settled_bonus(spec, 0.0) is None  # a head that learned the whole reward: nothing to settle unless asked
    assert settled_bonus(replace(spec, terminate_on_success=False), 10.0) is None  # no episode the model ends: nowhere to pay it
    assert settled_bonus(replace(spec, reward="true"), 10.0) is None


@pytest.mark.parametrize("shaping", [0.0, 20.0])
def test_rl_smoke_sac_on_the_true_reward(tmp_path, shaping):
    from embodied.policies.shaping import DenseTap
    from embodied.rl import ALGORITHMS, RLSpec, format_result, make_env, train_rl

    spec = RLSpec(env_id="embodied/PointReach-v0", instruction="reach the blue ball", reward="true", algo="sac", steps=150,
                  n_envs=1, episodes=2, device="cpu", shaping=shaping)
    env = make_env(spec, None, ALGORITHMS["sac"](), monitor=False)  # the true reward tells its dense part where it is shaped
    assert any(isinstance(w, DenseTap) for w in _wrappers(env)) == bool(shaping)
    env.close()
    r = train_rl(spec, tmp_path / "sac")
    assert r["eval"]["episodes"] == 2 and "reward_check" not in r and r["spec"]["shaping"] == shaping
    assert ("as a potential x 20" in format_result(r)) == bool(shaping)
    assert (tmp_path / "sac" / "rl.json").exists()


def _wrappers(env):
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env


def _seen_by_rl_policy(spec, state):
    """The state vector an RL run's evaluation policy (:class:`embodied.rl.StatePolicy`) hands its model for ``state``."""
    from embodied.rl import StatePolicy, state_view

    seen = []

    class Recorder:
        def predict(self, obs, deterministic=True):
            seen.append(obs)
            return np.zeros((len(obs), 2), np.float32), None

    StatePolicy(Recorder(), lambda s: s, state_view(spec)).predict({"state": state}, deterministic=True)  # type: ignore[arg-type]
    return seen[0][0]


def test_rl_policy_sees_the_named_object_first_in_training_and_evaluation():
    from embodied.envs import task_first
    from embodied.rl import ALGORITHMS, RLSpec, make_env, state_view

    spec = RLSpec(env_id="embodied/PointPushZone-v0", instruction="push the red cube into the green zone", reward="true")
    task = FixedTask(make(spec.env_id), spec.instruction).task
    on, off = (make_env(s, None, ALGORITHMS["ppo"](), monitor=False) for s in (spec, RLSpec(**{**spec.__dict__, "task_first": False})))
    raw = FixedTask(make(spec.env_id), spec.instruction)
    for seed in range(3):
        state = raw.reset(seed=seed)[0]["state"]
        assert np.array_equal(off.reset(seed=seed)[0], state)
        assert np.array_equal(on.reset(seed=seed)[0], task_first(state, task))
    assert np.array_equal(_seen_by_rl_policy(spec, state), task_first(state, task)) and state_view(RLSpec(**{**spec.__dict__, "task_first": False})) is None
    for e in (on, off, raw):
        e.close()


def test_rl_policy_sees_the_keep_out_lidar_in_training_and_evaluation():
    from embodied.envs import egocentric, task_first, with_keep_out_lidar
    from embodied.rl import ALGORITHMS, RLSpec, make_env

    spec = RLSpec(env_id="embodied/PointReachHazard-v0", instruction="touch the red cube", reward="true", egocentric=True, lidar=True)
    task = FixedTask(make(spec.env_id), spec.instruction).task
    env = make_env(spec, None, ALGORITHMS["ppo"](), monitor=False)
    raw = FixedTask(make(spec.env_id), spec.instruction)
    assert env.observation_space.shape == (raw.observation_space["state"].shape[0] + 16,)
    for seed in range(3):
        state = raw.reset(seed=seed)[0]["state"]
        want = egocentric(with_keep_out_lidar(task_first(state, task)))
        assert np.allclose(env.reset(seed=seed)[0], want) and want[-16:].max() > 0  # a zone within the lidar's reach
    assert np.allclose(_seen_by_rl_policy(spec, state), want)
    for e in (env, raw):
        e.close()


def test_rl_policy_sees_the_egocentric_view_in_training_and_evaluation():
    from embodied.envs import egocentric, task_first
    from embodied.rl import ALGORITHMS, RLSpec, make_env, state_view

    spec = RLSpec(env_id="embodied/PointReachHazard-v0", instruction="touch the red cube", reward="true", egocentric=True)
    task = FixedTask(make(spec.env_id), spec.instruction).task
    env = make_env(spec, None, ALGORITHMS["ppo"](), monitor=False)
    raw = FixedTask(make(spec.env_id), spec.instruction)
    for seed in range(3):
        state = raw.reset(seed=seed)[0]["state"]
        assert np.allclose(env.reset(seed=seed)[0], egocentric(task_first(state, task)))
    assert np.allclose(_seen_by_rl_policy(spec, state), egocentric(task_first(state, task)))
    assert np.allclose(state_view(RLSpec(**{**spec.__dict__, "task_first": False}))(state[None])[0], egocentric(state))
    for e in (env, raw):
        e.close()
