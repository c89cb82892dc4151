"""The foundation policy: SB3's evaluate_policy unchanged, cached = uncached actions, episode resets, loading a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy

from embodied import specs
from embodied.config import preset
from embodied.envs import InstructionAsBytes, ScriptedExpert, make
from embodied.model import TrajectoryModel
from embodied.policies import FoundationPolicy
from conftest import fake_encode as _fake_encode


@pytest.mark.parametrize("pixels", [0, 64])
def test_cached_and_uncached_policies_act_alike(pixels):
    torch.manual_seed(0)
    model = TrajectoryModel(preset("tiny", pixels=pixels, context=8))
    fast, slow = FoundationPolicy(model, _fake_encode), FoundationPolicy(model, _fake_encode, use_cache=False)
    env = make("embodied/Arm2PushZone-v0", pixels=pixels or None)
    obs, _ = env.reset(seed=0)
    for _ in range(8):  # within the context the two agree exactly (up to float rounding)
        a, _ = fast.predict(obs, deterministic=True)
        b, _ = slow.predict(obs, deterministic=True)
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert a.shape == (2,) and np.all(np.abs(a) <= 1)
        obs, *_ = env.step(a)
    env.close()


@pytest.mark.parametrize("policy_history", [False, True])
def test_fixed_buffer_steps_act_like_the_plain_cache_across_episodes(policy_history, monkeypatch):
    """The CUDA-graph path's buffers (run without a graph here): same actions, one capture per row, reused by the next episode."""
    from embodied.policies import graphed

    captures = []
    monkeypatch.setattr(graphed, "eager", lambda step: captures.append(step) or step)
    torch.manual_seed(0)
    model = TrajectoryModel(preset("tiny", context=4, policy_history=policy_history))
    fixed, plain = FoundationPolicy(model, _fake_encode, graphs=True), FoundationPolicy(model, _fake_encode, graphs=False)
    assert FoundationPolicy(model, _fake_encode).graphs is False  # off by default without CUDA
    env = make("embodied/Arm2PushZone-v0")
    instructions = []
    for seed in (0, 1):  # the second episode restarts the row's buffers with its own instruction
        obs, _ = env.reset(seed=seed)
        instructions.append(obs["instruction"])
        for t in range(7):  # past the context of 4: the ring wraps
            a, _ = fixed.predict(obs, episode_start=np.array([t == 0]), deterministic=True)
            b, _ = plain.predict(obs, episode_start=np.array([t == 0]), deterministic=True)
            np.testing.assert_allclose(a, b, atol=1e-5)
            obs, *_ = env.step(a)
    env.close()
    assert instructions[0] != instructions[1] and len(captures) == 1
    row, ep = fixed._graphed[0], fixed._episodes[0]
    assert ep.cache is row.ring and row.ring.t == 6 and torch.equal(row.ring.goal, ep.goal)
    if not policy_history:  # the goal tokens' cache was recomputed for the second instruction
        with torch.inference_mode():
            torch.testing.assert_close(row.goal_cache[0][0], model.start(ep.goal)[0][0])


def test_evaluate_policy_runs_unchanged_and_episode_start_resets():
    model = TrajectoryModel(preset("tiny"))
    policy = FoundationPolicy(model, _fake_encode)
    env = InstructionAsBytes(make("embodied/PointReach-v0"))
    mean, std = evaluate_policy(policy, env, n_eval_episodes=2, deterministic=True)
    assert np.isfinite(mean)
    obs, _ = env.reset(seed=1)
    batch = {k: v[None] for k, v in obs.items()}
    policy.predict(batch, episode_start=np.array([True]))
    t_before = policy._episodes[0].t
    policy.predict(batch, episode_start=np.array([False]))
    assert policy._episodes[0].t == t_before + 1
    policy.predict(batch, episode_start=np.array([True]))
    assert policy._episodes[0].t == 1  # a new episode starts a new cache
    assert specs.decode_instruction(obs["instruction"]) == env.unwrapped.instruction
    # the scripted expert follows the same protocol
    mean_e, _ = evaluate_policy(ScriptedExpert(env), env, n_eval_episodes=3)
    assert mean_e > 5  # the expert reaches its target (a return of about 9)


def test_load_a_trained_run_and_act(tiny_run):
    policy = FoundationPolicy.load(tiny_run, device="cpu")
    env = make("embodied/PointReach-v0")
    obs, _ = env.reset(seed=3)
    a, _ = policy.predict(obs, deterministic=True)
    assert a.shape == (2,) and np.all(np.isfinite(a))
    b, _ = policy.predict(obs)  # sampled from the bins
    assert b.shape == (2,)
    env.close()
