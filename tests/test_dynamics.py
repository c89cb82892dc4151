"""The model as a dynamics model: imagine's shapes, candidates batched = one by one, cached context = full history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embodied import specs
from embodied.config import preset
from embodied.envs import ScriptedExpert, make
from embodied.model import TrajectoryModel
from embodied.policies import FoundationPolicy
from embodied.policies.dynamics import Context, DynamicsModel, policy_context, stack_contexts
from conftest import fake_encode as _encode


def _model(pixels: int = 0, context: int = 16) -> TrajectoryModel:
    torch.manual_seed(0)
    model = TrajectoryModel(preset("tiny", pixels=pixels, context=context))
    with torch.no_grad():  # make the heads matter: random (not near-zero) outputs, a non-trivial normaliser
        model.state_head.weight.normal_(0, 0.3)
        model.outcome_head.weight.normal_(0, 0.3)
    model.set_normalizer(torch.randn(specs.STATE_DIM) * 0.1, torch.rand(specs.STATE_DIM) + 0.5, 0.2, 2.0)
    return model.eval()


def _episode(steps: int, pixels: int = 0, seed: int = 0):
    """States (steps + 1, S), actions (steps, A), pixels and the instruction of a noisy-expert episode."""
    env = make("embodied/Arm2PushZone-v0", pixels=pixels or None)
    obs, _ = env.reset(seed=seed)
    expert = ScriptedExpert(env, noise=0.5, seed=seed)
    states, actions, images = [obs["state"]], [], [obs.get("pixels")]
    for _ in range(steps):
        a, _ = expert.predict(obs)
        obs, *_ = env.step(a)
        states.append(obs["state"])
        actions.append(a)
        images.append(obs.get("pixels"))
    env.close()
    return np.stack(states), np.stack(actions).astype(np.float32), (np.stack(images) if pixels else None), obs["instruction"]


@pytest.mark.parametrize("pixels", [0, 64])
def test_imagine_shapes_and_ranges(pixels):
    dyn = DynamicsModel(_model(pixels), _encode)
    states, actions, images, instruction = _episode(3, pixels)
    obs = {"state": states[-1], "instruction": instruction, **({"pixels": images[-1]} if pixels else {})}
    cand = np.random.default_rng(0).uniform(-1, 1, size=(5, 4, 2))
    out = dyn.imagine(obs, cand)
    assert out.state.shape == (5, 4, specs.STATE_DIM)
    assert out.reward.shape == out.cost.shape == out.success.shape == (5, 4)
    assert ((out.cost >= 0) & (out.cost <= 1)).all() and ((out.success >= 0) & (out.success <= 1)).all()
    assert (out.latent is None) == (pixels == 0)
    if pixels:
        assert out.latent.shape == (5, 4, dyn.model.cfg.d_model)
    assert not torch.equal(out.state[0], out.state[1])  # different actions, different futures
    one = dyn.imagine(states[-1], cand[0], instruction=instruction) if not pixels else dyn.imagine(obs, cand[0])
    assert one.state.shape == (1, 4, specs.STATE_DIM)
    arrays = out.numpy()
    assert arrays["state"].dtype == np.float32 and set(arrays) == ({"state", "reward", "cost", "success"} | ({"latent"} if pixels else set()))


@pytest.mark.parametrize("pixels", [0, 64])
def test_candidates_batched_equal_one_by_one(pixels):
    dyn = DynamicsModel(_model(pixels), _encode)
    states, actions, images, instruction = _episode(6, pixels)
    ctx = dyn.context(instruction, states, actions, images)
    cand = np.random.default_rng(1).uniform(-1, 1, size=(8, 5, 2)).astype(np.float32)
    batched = dyn.imagine(ctx, cand)
    for i in range(len(cand)):
        alone = dyn.imagine(ctx, cand[i])
        for k in ("state", "reward", "cost", "success"):
            torch.testing.assert_close(getattr(batched, k)[i], getattr(alone, k)[0], atol=1e-5, rtol=1e-5)
    assert len(ctx.cache[0][0]) == 1  # the context's own cache was not expanded in place


def test_stacked_contexts_imagine_like_each_alone():
    """Lockstep episodes (equal history lengths) imagine together: each context's candidates as if alone."""
    dyn = DynamicsModel(_model(), _encode)
    ctxs = []
    for seed in (0, 1, 2):
        states, actions, _, instruction = _episode(4, seed=seed)
        ctxs.append(dyn.context(instruction, states, actions))
    cand = torch.as_tensor(np.random.default_rng(6).uniform(-1, 1, size=(3, 5, 4, 2)), dtype=torch.float32)
    together = dyn.imagine(stack_contexts(ctxs), cand.reshape(15, 4, 2), per_context=5)
    for b, ctx in enumerate(ctxs):
        alone = dyn.imagine(ctx, cand[b])
        torch.testing.assert_close(together.state[5 * b : 5 * b + 5], alone.state, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together.reward[5 * b : 5 * b + 5], alone.reward, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="per_context"):
        dyn.imagine(stack_contexts(ctxs), cand[0], per_context=5)


def _imagine_uncached(model: TrajectoryModel, goal: torch.Tensor, states: np.ndarray, actions: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """The reference: a full forward pass over the whole history plus the imagined steps, once per imagined step."""
    S = [torch.as_tensor(s)[None] for s in states]
    A = [torch.as_tensor(a)[None] for a in actions]
    out = []
    for a in torch.as_tensor(cand):
        A.append(a[None])
        T = len(S)
        batch = {specs.STATE: torch.cat(S)[None], specs.ACTION: torch.cat(A)[None], "timestep": torch.arange(T)[None],
                 "mask": torch.ones(1, T, dtype=torch.bool)}
        h = model(batch, goal)["h_act"][:, -1]
        S.append(model.next_state(S[-1], model.outcomes(h)["delta"]))
        out.append(S[-1][0])
    return torch.stack(out).numpy()


def test_cached_context_equals_imagining_from_the_full_history():
    model = _model(context=16)
    dyn = DynamicsModel(model, _encode)
    states, actions, _, instruction = _episode(7)
    cand = np.random.default_rng(2).uniform(-1, 1, size=(6, 2)).astype(np.float32)
    with torch.no_grad():
        want = _imagine_uncached(model, dyn.goal(instruction), states, actions, cand)
    got = dyn.imagine(dyn.context(instruction, states, actions), cand).state[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    # without the history the prediction differs: the context is really used
    bare = dyn.imagine(states[-1], cand, instruction=instruction).state[0].numpy()
    assert np.abs(bare - want).max() > 1e-3


def test_imagine_from_a_running_policys_cache():
    """A policy's own cache after predict gives the same futures as the episode's history rebuilt from scratch."""
    model = _model(context=16)
    policy = FoundationPolicy(model, _encode)
    dyn = DynamicsModel.of(policy)
    env = make("embodied/PointReach-v0")
    obs, _ = env.reset(seed=4)
    states, actions = [obs["state"]], []
    for _ in range(5):
        a, _ = policy.predict(obs, deterministic=True)
        obs, *_ = env.step(a)
        states.append(obs["state"])
        actions.append(a)
    policy.predict(obs, deterministic=True)  # the cache now ends with the current observation
    env.close()
    cand = np.random.default_rng(3).uniform(-1, 1, size=(4, 6, 2)).astype(np.float32)
    ctx = policy_context(policy)
    assert ctx.observed and ctx.timestep == 5
    got = dyn.imagine(ctx, cand)
    want = dyn.imagine(dyn.context(obs["instruction"], np.stack(states), np.stack(actions)), cand)
    torch.testing.assert_close(got.state, want.state, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.reward, want.reward, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="predict first"):
        policy_context(FoundationPolicy(model, _encode))


def test_long_histories_and_horizons_stay_within_the_context():
    """Past the model's context the oldest timesteps drop out, as the policy's cache drops them."""
    model = _model(context=8)
    dyn = DynamicsModel(model, _encode)
    states, actions, _, instruction = _episode(20)
    cand = torch.as_tensor(np.random.default_rng(5).uniform(-1, 1, size=(3, 5, 2)), dtype=torch.float32)
    ctx = dyn.context(instruction, states, actions)
    assert (ctx.cache[0][0].shape[2] - model.cfg.n_goal_tokens) // 2 == 7  # context - 1 past timesteps kept
    got = dyn.imagine(ctx, cand)
    # 5 imagined steps (the current timestep and 4 more) leave room for 3 past timesteps: the 4 oldest go
    cache = ctx.cache
    for _ in range(4):
        cache = model._drop_oldest(cache)
    with torch.no_grad():
        want = model.imagine(cache, ctx.state, torch.tensor([ctx.timestep]), cand)
    torch.testing.assert_close(got.state, want["state"], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        kept_all = model.imagine(ctx.cache, ctx.state, torch.tensor([ctx.timestep]), cand[:, :1])  # H = 1 fits: nothing dropped
        three = model.imagine(cache, ctx.state, torch.tensor([ctx.timestep]), cand[:, :1])
    assert not torch.allclose(kept_all["state"], three["state"], atol=1e-4)
    long = dyn.imagine(ctx, np.zeros((2, 12, 2), dtype=np.float32))  # H > context: drops as it goes
    assert long.state.shape == (2, 12, specs.STATE_DIM) and torch.isfinite(long.state).all()


def test_bad_inputs_say_what_to_do():
    dyn = DynamicsModel(_model(), _encode)
    states, actions, _, instruction = _episode(3)
    with pytest.raises(ValueError, match="T - 1"):
        dyn.context(instruction, states, actions[:1])
    with pytest.raises(ValueError, match=r"\(N, H, 2\)"):
        dyn.imagine(states[-1], np.zeros((2, 3, 4)), instruction=instruction)
    with pytest.raises(ValueError, match="instruction"):
        dyn.imagine(states[-1], np.zeros((3, 2)))
    assert isinstance(dyn.context(instruction, states[:1]), Context)


def test_state_changes_in_units_of_their_spread_and_static_dims_frozen():
    model = TrajectoryModel(preset("tiny", context=8))
    delta = torch.rand(specs.STATE_DIM) * 0.01 + 1e-3
    delta[specs.dynamic_state_dims()["joints"]] = 0.0  # never change in the data (a point-mass store)
    model.set_normalizer(torch.zeros(specs.STATE_DIM), torch.ones(specs.STATE_DIM), delta_std=delta)
    s = torch.randn(4, specs.STATE_DIM)
    out = model.next_state(s, torch.randn(4, specs.STATE_DIM))
    joints = specs.dynamic_state_dims()["joints"]
    assert torch.equal(out[:, joints], s[:, joints]) and not torch.equal(out, s)
    # the loss ignores dims that never change: a target change there moves nothing
    T = 3
    batch = {specs.STATE: torch.randn(2, T, specs.STATE_DIM), specs.ACTION: torch.rand(2, T, 2) * 2 - 1, "timestep": torch.arange(T).expand(2, T),
             "mask": torch.ones(2, T, dtype=torch.bool), specs.REWARD: torch.zeros(2, T), specs.COST: torch.zeros(2, T), specs.SUCCESS: torch.zeros(2, T)}
    goal = torch.randn(2, model.cfg.goal_dim)
    _, terms = model.loss(batch, goal)
    batch[specs.STATE][:, :, joints] += torch.randn(2, T, len(joints))
    _, moved = model.loss(batch, goal)
    assert torch.allclose(terms["state"], moved["state"])


def test_checkpoints_without_delta_scale_keep_their_units():
    model = TrajectoryModel(preset("tiny"))
    model.set_normalizer(torch.zeros(specs.STATE_DIM), torch.rand(specs.STATE_DIM) + 0.5)
    old = {k: v for k, v in model.state_dict().items() if k != "delta_scale"}  # as written before delta_scale existed
    fresh = TrajectoryModel(preset("tiny"))
    fresh.load_state_dict(old)
    assert torch.equal(fresh.delta_scale, model.state_std)


def test_delta_std_of_the_stores(tmp_path):
    from embodied.collect import CollectSpec, collect
    from embodied.datasets import EpisodeStore
    from embodied.training_data import delta_std

    url = str(tmp_path / "d.zarr")
    collect(CollectSpec(out=url, env_ids=("embodied/PointReach-v0",), episodes=6, policy="noisy:0.5"), progress=False)
    with EpisodeStore.open(url) as s:
        d = np.concatenate([np.diff(s.episode(i)["state"].astype(np.float64), axis=0) for i in range(len(s))])
    want = d.std(0)
    np.testing.assert_allclose(delta_std([url]).numpy(), want, rtol=1e-4, atol=1e-7)
    static = want == 0
    assert static.sum() > 40 and (delta_std([url]).numpy()[static] == 0).all()
    sub = delta_std([url], max_episodes=3).numpy()  # every other episode: an estimate
    ee = specs.dynamic_state_dims()["ee_pos"]
    assert np.all(sub[ee] > 0) and not np.allclose(sub, want)
