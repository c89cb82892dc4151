"""The ring-buffer cache computes what ``TrajectoryModel.step`` computes, at every step, also once the ring wraps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from embodied.config import preset
from embodied.model import TrajectoryModel
from embodied.ringcache import RingCache, _masks


def _model(context: int, pixels: int = 0, state_input: str = "full", obs_encoder: str = "flat") -> TrajectoryModel:
    torch.manual_seed(context)
    m = TrajectoryModel(preset("tiny", context=context, pixels=pixels, state_input=state_input, obs_encoder=obs_encoder)).eval()
    S = m.cfg.state_dim
    m.set_normalizer(torch.randn(S), torch.rand(S) + 0.5)  # a normaliser that is not the identity
    return m


def _rollout(m: TrajectoryModel, steps: int, rows: int = 2, pixels: int = 0, seed: int = 0):
    """(states, actions, pixels) for ``steps`` timesteps of ``rows`` episodes."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(steps, rows, m.cfg.state_dim, generator=g) * 3
    actions = torch.rand(steps, rows, m.cfg.action_dim, generator=g) * 2 - 1
    images = torch.randint(0, 256, (steps, rows, pixels, pixels, 3), generator=g, dtype=torch.uint8) if pixels else None
    return states, actions, images


@pytest.mark.parametrize("context,pixels,state_input,obs_encoder", [
    (1, 0, "full", "flat"), (2, 0, "full", "flat"), (5, 0, "full", "flat"), (4, 0, "proprio", "flat"), (3, 32, "proprio", "flat"),
    (3, 0, "full", "entities"), (2, 16, "no_velocity", "entities")])
def test_ring_cache_equals_the_list_cache_at_every_step(context, pixels, state_input, obs_encoder):
    m = _model(context, pixels, state_input, obs_encoder)
    goal = torch.randn(2, m.cfg.goal_dim)
    states, actions, images = _rollout(m, 3 * context + 4, pixels=pixels)
    ring = RingCache(m, goal)
    with torch.inference_mode():
        cache = m.start(goal)
        for t in range(len(states)):
            prev = actions[t - 1] if t else None
            p = None if images is None else images[t]
            want, cache = m.step(cache, states[t], torch.full((2,), t), p, prev)
            got = ring.step(states[t], t, prev, p)
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_dropping_the_oldest_timestep_matters_and_happens():
    """Past the context the ring must forget: a model that remembers more acts differently."""
    C, steps = 2, 8
    m = _model(C)
    big = TrajectoryModel(dataclasses.replace(m.cfg, context=64)).eval()
    big.load_state_dict(m.state_dict())
    goal = torch.randn(2, m.cfg.goal_dim)
    states, actions, _ = _rollout(m, steps)
    ring, long_ring = RingCache(m, goal), RingCache(big, goal)
    diffs = []
    for t in range(steps):  # outside inference mode on purpose: step enters it itself
        prev = actions[t - 1] if t else None
        diffs.append((ring.step(states[t], t, prev) - long_ring.step(states[t], t, prev)).abs().max().item())
    assert max(diffs[:C]) < 1e-5 and min(diffs[C + 1:]) > 1e-4


def test_masks_hide_empty_slots_the_dropped_action_and_the_future():
    G, C = 1, 3
    ok = _masks(G, C, torch.device("cpu")) == 0  # (2C, 2, G + 2C); slots: goal, then (a, o) per pair
    assert ok[0, 1].tolist() == [True, False, True, False, False, False, False]  # t=0: goal and o_0
    assert ok[2, 0].tolist() == [True, False, True, True, True, True, False]  # t=2, query a_1: not o_2
    assert ok[2, 1].tolist() == [True, False, True, True, True, True, True]  # t=2, query o_2
    # t=3 (pair 0 now holds a_2, o_3): a_0 (beside o_1 in pair 1) is dropped
    assert ok[C + 0, 1].tolist() == [True, True, True, False, True, True, True]
    assert ok[C + 0, 0].tolist() == [True, True, False, False, True, True, True]


def test_steps_must_come_in_order():
    m = _model(2)
    ring = RingCache(m, torch.randn(1, m.cfg.goal_dim))
    s = torch.randn(1, m.cfg.state_dim)
    with pytest.raises(ValueError, match="prev_action"):
        ring.step(s, 0, torch.zeros(1, 2))
    ring.step(s, 0)
    with pytest.raises(ValueError, match="expected t=1"):
        ring.step(s, 2, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="prev_action"):
        ring.step(s, 1)


@pytest.mark.parametrize("obs_encoder", ["flat", "entities"])
def test_device_timesteps_and_a_restart_in_place_compute_the_same_steps(obs_encoder):
    """The graph-capturable form (timestep as a tensor, buffers restarted in place) equals a fresh cache stepped by ints."""
    C = 3
    m = _model(C, obs_encoder=obs_encoder)
    goal = torch.randn(1, m.cfg.goal_dim)
    states, actions, _ = _rollout(m, 3 * C + 2, rows=1)
    ref = RingCache(m, goal)
    ring = RingCache(m, torch.randn(1, m.cfg.goal_dim))  # another episode first ...
    for t in range(C + 1):
        ring.step(states[t] + 1.0, t, actions[t - 1] if t else None)
    ring.restart(goal)  # ... then this one, in the same buffers
    assert ring.t == -1 and torch.equal(ring.goal, goal)
    for t in range(len(states)):
        prev = actions[t - 1] if t else None
        want = ref.step(states[t], t, prev)
        if t == 0:
            got = ring.step(states[t], 0)
        else:
            got = ring.step(states[t], torch.tensor(t), prev)  # neither checks nor counts ...
            ring.stepped(t)  # ... the caller does
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert ring.t == len(states) - 1
    with pytest.raises(ValueError, match="expected t="):
        ring.stepped(ring.t + 2)
    with pytest.raises(ValueError, match="needs prev_action"):
        ring.step(states[0], torch.tensor(1))
