"""The batched learned reward (VecLearnedReward + RewardTap) gives what per-env LearnedReward gives, step by step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from embodied.config import preset
from embodied.envs import FixedTask, StateOnly, make
from embodied.errors import ConfigError
from embodied.model import TrajectoryModel
from embodied.policies import LearnedReward, RewardEnsemble, RewardModel
from embodied.policies.reward import settle_success
from embodied.policies.vec_reward import RewardTap, VecLearnedReward
from conftest import fake_encode

INSTRUCTION = "push the red cube to the right"


@pytest.fixture(scope="module")
def reward_model():
    torch.manual_seed(1)
    model = TrajectoryModel(preset("tiny", context=8))
    for p in model.outcome_head.parameters():  # outputs large enough that a wrong context would show
        torch.nn.init.normal_(p, std=0.5)
    model.set_normalizer(torch.zeros(model.cfg.state_dim), torch.ones(model.cfg.state_dim), reward_mean=-1.0, reward_std=2.0)
    return RewardModel(model, fake_encode, device="cpu")


class _Penalty:
    """A reward wrapper after the tap, like the Lagrangian's: reward - 0.5 x |action|_1 (additive, as the real one is)."""

    @staticmethod
    def wrap(env):
        import gymnasium as gym

        class Penalised(gym.Wrapper):
            def step(self, action):
                obs, r, te, tr, info = self.env.step(action)
                return obs, r - 0.5 * float(np.abs(action).sum()), te, tr, info

        return Penalised(env)


def _venv(wrap, n, max_steps):
    def make_one(i):
        return lambda: StateOnly(_Penalty.wrap(wrap(FixedTask(make("embodied/PointPushDir-v0", max_episode_steps=max_steps[i]), INSTRUCTION))))
    venv = DummyVecEnv([make_one(i) for i in range(n)])
    venv.seed(5)
    return venv


def _median_success(reward_model) -> float:
    """The median success probability the (random) model gives on random play: a threshold some steps pass."""
    env = LearnedReward(FixedTask(make("embodied/PointPushDir-v0"), INSTRUCTION), reward_model, INSTRUCTION)
    env.reset(seed=11)
    rng = np.random.default_rng(1)
    p = [env.step(rng.uniform(-1, 1, 2).astype(np.float32))[4]["learned_success"] for _ in range(20)]
    env.close()
    return float(np.median(p))


@pytest.fixture(scope="module")
def change_model(reward_model):
    """The same model with a reward-change head (``ModelConfig.reward_change``) large enough that the fusion shows."""
    torch.manual_seed(2)
    model = TrajectoryModel(replace(reward_model.model.cfg, reward_change=0.8))
    model.load_state_dict(reward_model.model.state_dict(), strict=False)
    torch.nn.init.normal_(model.change_head.weight, std=0.5)
    model.set_normalizer(torch.zeros(model.cfg.state_dim), torch.ones(model.cfg.state_dim), reward_mean=-1.0, reward_std=2.0,
                         change_std=0.3)
    return RewardModel(model, fake_encode, device="cpu")


@pytest.fixture(scope="module")
def hindsight_model(reward_model):
    """The same weights read in hindsight (``ModelConfig.reward_hindsight``): each action's outcome at the next observation."""
    model = TrajectoryModel(replace(reward_model.model.cfg, reward_hindsight=True))
    model.load_state_dict(reward_model.model.state_dict())
    return RewardModel(model, fake_encode, device="cpu")


@pytest.mark.parametrize("ends", ["env", "model"])
def test_batched_reward_of_a_hindsight_model_equals_per_env_across_episode_ends(hindsight_model, ends):
    """Each step is read at the observation it led to, the last one of an episode included, batched as per env."""
    _check_batched_equals_per_env(hindsight_model, ends, 10.0 if ends == "model" else None, None)


def test_a_hindsight_model_reads_the_step_at_the_observation_it_led_to(reward_model, hindsight_model):
    """The same action from the same past scores differently by where it led (a foresight model cannot tell)."""
    rng = np.random.default_rng(3)
    S, A = reward_model.model.cfg.state_dim, reward_model.model.cfg.action_dim
    s0, a = rng.normal(size=(1, S)).astype(np.float32), rng.uniform(-1, 1, (1, A)).astype(np.float32)
    nxt = rng.normal(size=(2, S)).astype(np.float32)
    for model, differ in ((hindsight_model, True), (reward_model, False)):
        r = [model.step(model.start([INSTRUCTION], s0), a, nxt[i : i + 1])["reward"][0] for i in range(2)]
        assert (abs(r[0] - r[1]) > 1e-3) == differ
    with pytest.raises(ConfigError, match="observation it led to"):
        hindsight_model.step(hindsight_model.start([INSTRUCTION], s0), a)
    with pytest.raises(ConfigError, match="pass 4 observations for 3 actions"):
        hindsight_model.score(rng.normal(size=(3, S)).astype(np.float32), rng.uniform(-1, 1, (3, A)).astype(np.float32), INSTRUCTION)


@pytest.mark.parametrize("ends,bonus,ceiling", [("env", None, None), ("model", None, None), ("model", 10.0, None), ("model", 10.0, -0.5)])
def test_batched_reward_equals_per_env_learned_reward_across_episode_ends(reward_model, ends, bonus, ceiling):
    _check_batched_equals_per_env(reward_model, ends, bonus, ceiling)


@pytest.mark.parametrize("ends", ["env", "model"])
def test_batched_reward_of_a_reward_change_model_equals_per_env_across_episode_ends(change_model, ends):
    """The fused reward carries each env's last dense reward from step to step and starts afresh with each episode,
    the same batched as per env."""
    _check_batched_equals_per_env(change_model, ends, 10.0 if ends == "model" else None, None)


def _check_batched_equals_per_env(reward_model, ends, bonus, ceiling):
    n, lengths = 3, [5, 12, 7]  # episodes end at different steps, and run past the model's context of 8
    end_on_success = _median_success(reward_model) if ends == "model" else None
    ref = _venv(lambda e: LearnedReward(e, reward_model, INSTRUCTION, end_on_success=end_on_success, success_bonus=bonus,
                                        reward_ceiling=ceiling), n, lengths)
    fast = VecLearnedReward(_venv(RewardTap, n, lengths), reward_model, INSTRUCTION, end_on_success=end_on_success, success_bonus=bonus,
                            reward_ceiling=ceiling)
    o_ref, o_fast = ref.reset(), fast.reset()
    np.testing.assert_array_equal(o_ref, o_fast)
    rng = np.random.default_rng(0)
    ends = learned_ends = 0
    for _ in range(30):
        a = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        ref.step_async(a)
        fast.step_async(a)
        o_ref, r_ref, d_ref, i_ref = ref.step_wait()
        o_fast, r_fast, d_fast, i_fast = fast.step_wait()
        np.testing.assert_array_equal(d_ref, d_fast)
        np.testing.assert_array_equal(o_ref, o_fast)
        np.testing.assert_allclose(r_fast, r_ref, atol=1e-4)  # the model's reward, with the later wrapper's penalty kept
        for a_info, b_info in zip(i_ref, i_fast):
            assert b_info["true_reward"] == pytest.approx(a_info["true_reward"])
            assert b_info["learned_success"] == pytest.approx(a_info["learned_success"], abs=1e-5)
            assert b_info["learned_cost"] == pytest.approx(a_info["learned_cost"], abs=1e-5)
            if "terminal_observation" in a_info:  # where the next episode began, and what the last one ended in
                np.testing.assert_array_equal(a_info["terminal_observation"], b_info["terminal_observation"])
            believed = end_on_success is not None and b_info["learned_success"] > end_on_success
            learned_ends += int(believed)
            if believed:
                assert not a_info["TimeLimit.truncated"]  # a success ends the episode (no bootstrapping past it)
        ends += int(d_ref.sum())
    assert ends >= 6
    if end_on_success is not None:  # episodes the model believed solved ended, besides those of the step limit
        assert learned_ends >= 3 and ends >= learned_ends
    true = np.array([i["true_reward"] for i in i_fast]) - 0.5 * np.abs(a).sum(1)
    assert not np.allclose(r_fast, true, atol=1e-3)  # the env's own reward was replaced


def _twin_contexts(reward_model, n, seed):
    """A random source, a draw of (n, A) actions and (n, S) states from it, and two identical sets of n contexts."""
    rng = np.random.default_rng(seed)
    S, A = reward_model.model.cfg.state_dim, reward_model.model.cfg.action_dim

    def draw(k):
        return rng.uniform(-1, 1, (k, A)).astype(np.float32), rng.normal(size=(k, S)).astype(np.float32)

    firsts = draw(n)[1]
    twins = [[reward_model.start([INSTRUCTION], firsts[i:i + 1]) for i in range(n)] for _ in range(2)]
    return draw, twins[0], twins[1]


def test_step_each_matches_step_for_contexts_at_different_timesteps(reward_model):
    draw, solo, many = _twin_contexts(reward_model, 3, seed=1)
    for i, lead in enumerate((0, 3, 11)):  # staggered: caches of different lengths, one past the context
        for _ in range(lead):
            a, s = draw(1)
            reward_model.step(solo[i], a, s)
            reward_model.step_each([many[i]], a, s)
    for _ in range(10):
        a, s = draw(3)
        want = [reward_model.step(solo[i], a[i:i + 1], s[i:i + 1]) for i in range(3)]
        got = reward_model.step_each(many, a, s)
        for k in ("reward", "success", "cost"):
            np.testing.assert_allclose(got[k], np.concatenate([w[k] for w in want]), atol=1e-4)


def test_learned_success_ends_only_the_episodes_the_model_believes_solved(reward_model):
    env = LearnedReward(FixedTask(make("embodied/PointPushDir-v0"), INSTRUCTION), reward_model, INSTRUCTION, end_on_success=0.6)
    env.reset(seed=3)
    rng = np.random.default_rng(1)
    for t in range(100):
        _, _, terminated, truncated, info = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
        assert terminated == (info["learned_success"] > 0.6) and not info["is_success"]  # not the env's success
        if terminated or truncated:
            break
    assert terminated
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="probability"):
            LearnedReward(make("embodied/PointPushDir-v0"), reward_model, end_on_success=bad)
        with pytest.raises(ConfigError, match="probability"):
            VecLearnedReward(_venv(RewardTap, 1, [5]), reward_model, INSTRUCTION, end_on_success=bad)


def test_settled_success_pays_the_bonus_once_where_the_model_ends_the_episode(reward_model):
    reward, p = np.array([1.0, 2.0, -1.0], np.float32), np.array([0.2, 0.45, 0.7], np.float32)
    np.testing.assert_allclose(settle_success(reward, p, 0.5, 10.0), [1.0 - 2.0, 2.0 - 4.5, -1.0 - 7.0 + 10.0], rtol=1e-6)
    assert settle_success(reward, p, 0.5, None) is reward and settle_success(reward, p, None, 10.0) is reward
    th = _median_success(reward_model)  # the same episode scored with and without the bonus: they differ by just that
    plain = LearnedReward(FixedTask(make("embodied/PointPushDir-v0"), INSTRUCTION), reward_model, INSTRUCTION, end_on_success=th)
    settled = LearnedReward(FixedTask(make("embodied/PointPushDir-v0"), INSTRUCTION), reward_model, INSTRUCTION, end_on_success=th,
                            success_bonus=4.0)
    plain.reset(seed=11)
    settled.reset(seed=11)
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.uniform(-1, 1, 2).astype(np.float32)
        _, r0, te0, _, i0 = plain.step(a)
        _, r1, te1, _, i1 = settled.step(a)
        assert te0 == te1 and i0["learned_success"] == pytest.approx(i1["learned_success"])
        assert r1 == pytest.approx(r0 - 4.0 * i0["learned_success"] + (4.0 if te0 else 0.0), abs=1e-4)
        if te0:
            break
    assert te0  # the episode ended where the model believed it solved, and that step got the bonus
    for end, bonus in ((None, 10.0), (0.5, -1.0)):
        with pytest.raises(ConfigError, match="success bonus"):
            LearnedReward(make("embodied/PointPushDir-v0"), reward_model, end_on_success=end, success_bonus=bonus)


def test_vec_learned_reward_tells_the_dense_part_it_pays_besides_the_settled_bonus(reward_model):
    from embodied.policies.shaping import DENSE_REWARD, VecPotentialShaping

    th = _median_success(reward_model)
    venv = VecLearnedReward(_venv(RewardTap, 2, [6, 9]), reward_model, INSTRUCTION, end_on_success=th, success_bonus=4.0, reward_ceiling=0.0)
    shaped = VecPotentialShaping(VecLearnedReward(_venv(RewardTap, 2, [6, 9]), reward_model, INSTRUCTION, end_on_success=th,
                                                  success_bonus=4.0, reward_ceiling=0.0), 5.0, 0.9)
    venv.reset()
    shaped.reset()
    rng = np.random.default_rng(3)
    ended, first = 0, np.ones(2, bool)
    previous = np.zeros(2)
    for _ in range(30):
        a = rng.uniform(-1, 1, (2, 2)).astype(np.float32)
        _, r, dones, infos = venv.step(a)
        _, rs, dones_s, infos_s = shaped.step(a)
        assert (dones == dones_s).all()
        penalty = 0.5 * np.abs(a).sum(axis=1)
        for i, info in enumerate(infos):
            dense = info[DENSE_REWARD]
            assert dense <= 1e-6 and dense == pytest.approx(infos_s[i][DENSE_REWARD], abs=1e-5)
            paid = r[i] + penalty[i] - dense  # the bonus where the model's success ended the episode, else nothing
            assert paid == pytest.approx(4.0 if dones[i] and info["learned_success"] > th else 0.0, abs=1e-4)
            ended += bool(paid > 1.0)
            before = dense if first[i] else previous[i]  # the shaped vector pays the dense part as a potential instead
            assert rs[i] == pytest.approx(5.0 * (0.9 * dense - before) + paid - penalty[i], abs=1e-3)
            previous[i] = dense
        first = dones.copy()
    assert ended  # some episodes ended on the model's success and were paid the bonus


def test_reward_ceiling_bounds_the_dense_part_and_keeps_the_bonus(reward_model):
    # a reward head that expects more of the bonus than the success head: 4.5 - 10 x 0.2 = +2.5 a step, short of success
    reward, p = np.array([4.5, -1.0, 6.0], np.float32), np.array([0.2, 0.1, 0.8], np.float32)
    np.testing.assert_allclose(settle_success(reward, p, 0.5, 10.0, ceiling=0.0), [0.0, -2.0, -2.0 + 10.0], rtol=1e-6)
    np.testing.assert_allclose(settle_success(reward, p, 0.5, 10.0, ceiling=None), [2.5, -2.0, -2.0 + 10.0], rtol=1e-6)
    th = _median_success(reward_model)  # a whole episode: every step's dense part at most the ceiling, the bonus where it ends
    ceiled = LearnedReward(FixedTask(make("embodied/PointPushDir-v0"), INSTRUCTION), reward_model, INSTRUCTION, end_on_success=th,
                           success_bonus=4.0, reward_ceiling=-0.01)
    ceiled.reset(seed=11)
    rng = np.random.default_rng(1)
    for _ in range(20):
        _, r, te, _, _ = ceiled.step(rng.uniform(-1, 1, 2).astype(np.float32))
        assert r <= -0.01 + (4.0 if te else 0.0) + 1e-6
        if te:
            break
    assert te
    for bonus, ceiling in ((None, 0.0), (10.0, float("nan"))):
        with pytest.raises(ConfigError, match="reward ceiling"):
            LearnedReward(make("embodied/PointPushDir-v0"), reward_model, end_on_success=0.5, success_bonus=bonus, reward_ceiling=ceiling)
        with pytest.raises(ConfigError, match="reward ceiling"):
            VecLearnedReward(_venv(RewardTap, 1, [5]), reward_model, INSTRUCTION, end_on_success=0.5, success_bonus=bonus,
                             reward_ceiling=ceiling)


def test_a_model_that_left_the_bonus_to_its_success_head_scores_it_back_and_settles_to_its_head(reward_model):
    """A reward head trained without the success bonus (``ModelConfig.success_bonus``): the model's reward is the head's
    plus the bonus times the success probability, so a settled reward (the same bonus) is the head's dense part exactly."""
    split = TrajectoryModel(replace(reward_model.model.cfg, success_bonus=10.0))
    split.load_state_dict(reward_model.model.state_dict())
    scorer = RewardModel(split, fake_encode, device="cpu")
    rng = np.random.default_rng(4)
    states, actions = rng.normal(size=(7, split.cfg.state_dim)).astype(np.float32), rng.uniform(-1, 1, (6, 2)).astype(np.float32)
    plain, with_bonus = reward_model.score(states, actions, INSTRUCTION), scorer.score(states, actions, INSTRUCTION)
    np.testing.assert_allclose(with_bonus.success, plain.success, rtol=1e-5)
    np.testing.assert_allclose(with_bonus.reward, plain.reward + 10.0 * plain.success, rtol=1e-4, atol=1e-4)
    settled = settle_success(with_bonus.reward, with_bonus.success, 0.99, 10.0)
    np.testing.assert_allclose(settled, plain.reward + 10.0 * (plain.success > 0.99), rtol=1e-4, atol=1e-4)


def test_vec_learned_reward_refuses_envs_without_the_tap(reward_model):
    venv = VecLearnedReward(_venv(lambda e: e, 1, [5]), reward_model, INSTRUCTION)
    with pytest.raises(ConfigError, match="RewardTap"):
        venv.reset()
    with pytest.raises(ConfigError, match="dict observations"):
        RewardTap(StateOnly(make("embodied/PointPushDir-v0")))


def test_step_after_step_each_is_not_undone_by_the_next_batch(reward_model):
    draw, solo, mixed = _twin_contexts(reward_model, 2, seed=2)
    for k in range(6):  # batched, then one context stepped alone, then batched again
        a, s = draw(2)
        want = [reward_model.step(solo[i], a[i:i + 1], s[i:i + 1]) for i in range(2)]
        if k == 3:
            got = [reward_model.step(mixed[i], a[i:i + 1], s[i:i + 1])["reward"] for i in range(2)]
            got = np.concatenate(got)
        else:
            got = reward_model.step_each(mixed, a, s)["reward"]
        np.testing.assert_allclose(got, np.concatenate([w["reward"] for w in want]), atol=1e-4)


# ---------------------------------------------------------------------------- ensembles
@pytest.fixture(scope="module")
def second_model():
    """Another random reward model of the same layout: its rewards differ from ``reward_model``'s."""
    torch.manual_seed(2)
    model = TrajectoryModel(preset("tiny", context=8))
    for p in model.outcome_head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    model.set_normalizer(torch.zeros(model.cfg.state_dim), torch.ones(model.cfg.state_dim), reward_mean=0.5, reward_std=3.0)
    return RewardModel(model, fake_encode, device="cpu")


def test_ensemble_reward_is_the_members_mean_less_their_spread(reward_model, second_model):
    n, lengths, k = 3, [5, 12, 7], 0.7  # success_disagreement 1 with two members: the lower success probability
    members = [VecLearnedReward(_venv(RewardTap, n, lengths), m, INSTRUCTION) for m in (reward_model, second_model)]
    both = VecLearnedReward(_venv(RewardTap, n, lengths), RewardEnsemble([reward_model, second_model], disagreement=k,
                                                                                    success_disagreement=1.0), INSTRUCTION)
    for v in (*members, both):
        v.reset()
    rng = np.random.default_rng(3)
    spread_seen = success_gap = 0.0
    for _ in range(20):
        a = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        outs = []
        for v in (*members, both):
            v.step_async(a)
            outs.append(v.step_wait())
        (_, r0, d0, i0), (_, r1, _, i1), (_, r, d, info) = outs
        np.testing.assert_array_equal(d, d0)
        pair = np.stack([r0, r1])
        np.testing.assert_allclose(r, pair.mean(0) - k * pair.std(0), atol=1e-4)  # the same penalty term cancels in the spread
        for a_i, b_i, e_i in zip(i0, i1, info):
            assert e_i["learned_success"] == pytest.approx(min(a_i["learned_success"], b_i["learned_success"]), abs=1e-5)
            success_gap = max(success_gap, abs(a_i["learned_success"] - b_i["learned_success"]))
        np.testing.assert_allclose([e["learned_spread"] for e in info], pair.std(0), atol=1e-4)
        spread_seen = max(spread_seen, float(pair.std(0).max()))
    assert spread_seen > 0.1 and success_gap > 0.01  # the two models disagree, so both penalties did something


def test_ensemble_success_is_the_mean_less_its_spread_clipped(reward_model, second_model):
    trajectory = (np.random.default_rng(6).normal(size=(9, reward_model.model.cfg.state_dim)).astype(np.float32),
                  np.random.default_rng(7).uniform(-1, 1, (8, 2)).astype(np.float32), INSTRUCTION)
    p = np.stack([m.score(*trajectory).success for m in (reward_model, second_model)])
    for ks in (0.0, 0.5, 3.0):
        got = RewardEnsemble([reward_model, second_model], success_disagreement=ks).score(*trajectory).success
        np.testing.assert_allclose(got, np.clip(p.mean(0) - ks * p.std(0), 0, 1), atol=1e-5)
        assert got.min() >= 0


def test_ensemble_of_one_model_twice_is_that_model(reward_model):
    trajectory = (np.random.default_rng(4).normal(size=(7, reward_model.model.cfg.state_dim)).astype(np.float32),
                  np.random.default_rng(5).uniform(-1, 1, (6, 2)).astype(np.float32), INSTRUCTION)
    solo = reward_model.score(*trajectory)
    twice = RewardEnsemble([reward_model, reward_model], disagreement=5.0).score(*trajectory)
    for f in ("reward", "success", "cost"):
        np.testing.assert_allclose(getattr(twice, f), getattr(solo, f), atol=1e-5)


def test_ensemble_refuses_one_member_and_a_negative_penalty(reward_model, second_model):
    with pytest.raises(ConfigError, match="at least two"):
        RewardEnsemble([reward_model])
    with pytest.raises(ConfigError, match=">= 0"):
        RewardEnsemble([reward_model, second_model], disagreement=-1.0)
    with pytest.raises(ConfigError, match="success disagreement penalty must be >= 0"):
        RewardEnsemble([reward_model, second_model], success_disagreement=-0.5)


def test_a_reward_change_model_scores_each_step_as_the_running_sum_pulled_to_the_level(reward_model, change_model):
    """score() (one context, step by step) and step_each give dense_t = w (dense_{t-1} + change_t) + (1 - w) level_t, with
    the level the same model's reward head gives and dense_0 = level_0; the change head is what the fusion adds."""
    rng = np.random.default_rng(6)
    S = change_model.model.cfg.state_dim
    states, actions = rng.normal(size=(12, S)).astype(np.float32), rng.uniform(-1, 1, (11, 2)).astype(np.float32)
    level = reward_model.score(states, actions, INSTRUCTION).reward  # the shared weights without the change head
    with torch.no_grad():  # the change head's output at each action token, from the model's own cached pass
        cache = change_model.model.start(change_model.goal([INSTRUCTION]))
        changes = []
        for t in range(11):
            _, cache = change_model.model.observe(cache, torch.as_tensor(states[t:t + 1]), torch.tensor([t]))
            o, cache = change_model.model.act(cache, torch.as_tensor(actions[t:t + 1]), torch.tensor([t]))
            changes.append(float(o["reward_change"][0]) * 0.3)
    want = [float(level[0])]
    for t in range(1, 11):
        want.append(0.8 * (want[-1] + changes[t]) + 0.2 * float(level[t]))
    got = change_model.score(states, actions, INSTRUCTION).reward
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.abs(got - level)[1:].max() > 0.05  # the change head moved it
    ctx = [change_model.start([INSTRUCTION], states[:1])]
    each = [change_model.step_each(ctx, actions[t:t + 1], states[t + 1:t + 2])["reward"][0] for t in range(11)]
    np.testing.assert_allclose(each, want, rtol=1e-4, atol=1e-4)
