"""Constraints as data (specs, named scenes, cost terms) and in plain language (parser, fuzzing, refusals)."""

from __future__ import annotations

import time

import mujoco
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embodied import envs
from embodied.cli import main, understand_constraints
from embodied.envs.constraints import (
    CONSTRAINTS, COST_TERMS, ConstraintError, Fragile, KeepOut, SpeedLimit, Workspace, constraint_from, parse_constraint,
    state_cost, supported_constraints,
)
from embodied.envs.instructions import COLOURS
from embodied.envs.splits import ENVS
from embodied.errors import ConfigError
from embodied.specs import state_slices


def test_specs_round_trip_as_dicts_and_bad_specs_are_refused():
    for c in (KeepOut("blue"), KeepOut(), Fragile("red", "ball", 0.0), SpeedLimit(0.2), Workspace(0.25)):
        assert constraint_from(c.to_dict()) == c and c.to_dict()["kind"] in CONSTRAINTS and c.describe()
    for bad, words in [({"kind": "lava"}, "unknown constraint"), ({"colour": "blue"}, "kind"), ({"kind": "speed", "limit": -1}, "positive"),
                       ({"kind": "keep_out", "colour": "cyan"}, "keep-out zones are"), ({"kind": "fragile", "colour": "red"}, "colour and shape"),
                       ({"kind": "workspace", "size": 1}, "takes half_extent")]:
        with pytest.raises(ConfigError, match=words):
            constraint_from(bad)
    with pytest.raises(ConfigError, match="keep-out colours"):
        envs.make("embodied/PointReach-v0", constraints=[KeepOut(c) for c in ("red", "blue", "green")])


def test_every_term_is_in_info_zero_at_reset_and_the_cost_is_their_sum():
    env = envs.make("embodied/PointPushZoneHazardRows-v0")
    _, info = env.reset(seed=0)
    assert set(COST_TERMS) <= info.keys() and info["cost"] == 0.0
    seen = dict.fromkeys(COST_TERMS, 0.0)
    for _ in range(20):
        info = env.step(np.array([1.0, 1.0], np.float32))[4]
        assert info["cost"] == sum(info[k] for k in COST_TERMS) and all(info[k] in (0.0, 1.0) for k in COST_TERMS)
        seen = {k: max(v, info[k]) for k, v in seen.items()}
    assert seen["cost_speed"] == 1.0 and info["cost_workspace"] == 1.0  # 0.57 m/s, then in the top right corner
    env.close()
    assert envs.entry("embodied/PointPushZoneHazardRows-v0").split == "heldout"


def _teleport(env, xy):
    u = env.unwrapped
    u.data.qpos[u.embodiment.qpos_adr] = xy
    u.data.qvel[:] = 0
    mujoco.mj_forward(u.model, u.data)


def test_named_keep_out_zone_is_in_the_scene_and_only_it_costs():
    env = envs.make("embodied/PointPushZone-v0", hazards=2, constraints=[{"kind": "keep_out", "colour": "blue"}])
    env2 = envs.make("embodied/PointPushZone-v0", constraints=[KeepOut("blue")])
    for seed in range(8):
        env.reset(seed=seed)
        env2.reset(seed=seed)
        u = env.unwrapped
        assert u._hazard_colours[0] == "blue" and "blue" not in u._zone_colours and len(u._hazard_colours) == 2
        assert env2.unwrapped.n_hazards == 1 and env2.unwrapped._hazard_colours == ["blue"]
        _teleport(env2, env2.unwrapped._hazard_pos[0])
        assert env2.step(np.zeros(2, np.float32))[4]["cost_hazard"] == 1.0
    env3 = envs.make("embodied/PointPushZone-v0", constraints=[KeepOut("blue")])
    env3.reset(seed=0)
    with pytest.raises(ConfigError, match="same colour as a keep-out zone"):
        env3.reset(seed=0, options={"task": {"family": "push_zone", "colour": "red", "shape": "cube", "zone": "blue"}})
    for e in (env, env2, env3):
        e.close()


def test_named_fragile_object_is_a_distractor_and_touching_it_costs():
    env = envs.make("embodied/PointReach-v0", constraints=[Fragile("red", "ball", force=0.0)])
    hit = False
    for seed in range(6):
        env.reset(seed=seed)
        u = env.unwrapped
        slots = [i for i in range(3) if (u._colours[i], u._shapes[i]) == ("red", "ball")]
        assert len(slots) == 1 and slots[0] != u.goal.target and len(u._fragile_geoms) == 1
        for _ in range(40):  # drive into the red ball
            ee, obj = u.embodiment.ee_pos(u.data), u.data.qpos[u.h.obj_qpos[slots[0], :2]]
            info = env.step(np.clip((obj - ee) * 20, -1, 1).astype(np.float32))[4]
            hit |= info["cost_fragile"] == 1.0
        if hit:
            break
    assert hit
    with pytest.raises(ConfigError, match="target"):
        env.reset(seed=0, options={"task": {"family": "reach", "colour": "red", "shape": "ball"}})
    env.close()


def test_plain_language_constraints():
    cases = {
        "stay out of the blue zone": KeepOut("blue"), "Avoid the green area!": KeepOut("green"), "keep away from the hazards": KeepOut(),
        "don't touch the red ball": Fragile("red", "ball", 0.0), "do not bump into the yellow cubes": Fragile("yellow", "cube", 0.0),
        "be gentle with the other objects": Fragile(), "move slowly": SpeedLimit(0.2), "stay below 0.15 m/s": SpeedLimit(0.15),
        "go no faster than 10 cm/s": SpeedLimit(0.1), "stay inside the workspace": Workspace(), "stay within 25 cm of the centre": Workspace(0.25),
    }
    for text, spec in cases.items():
        assert parse_constraint(text) == spec, text
    for phrase in supported_constraints():
        parse_constraint(phrase)
    for text, words in [("juggle", "fits none"), ("don't touch the pink ball", "pink"), ("stay out of the cyan zone", "cyan"),
                        ("don't touch it", "colour and shape"), ("stay within 90 cm of the centre", "40 cm"), ("", "empty")]:
        with pytest.raises(ConstraintError, match=words):
            parse_constraint(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.lists(st.sampled_from(
    ["stay", "out", "of", "the", "blue", "zone", "don't", "touch", "red", "ball", "move", "slowly", "below", "0.2", "m/s", "cm",
     "workspace", "within", "centre", "cyan", "other", "objects", "gentle", "!"]), max_size=12).map(" ".join)))
def test_any_string_gives_a_constraint_or_the_error_quickly(text):
    t0 = time.perf_counter()
    try:
        c = parse_constraint(text)
    except ConstraintError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert constraint_from(c.to_dict()) == c
    assert time.perf_counter() - t0 < 0.05


def test_refusal_names_the_closest_supported_phrasings(capsys):
    assert understand_constraints(["stay out of the blue zone"]) == [KeepOut("blue")]
    with pytest.raises(ConfigError, match="Closest supported") as e:
        understand_constraints(["please never enter the lava pit"])
    assert "\n" not in str(e.value) and any(p in str(e.value) for p in supported_constraints())
    assert main(["run", "touch the red cube", "--ckpt", "nowhere", "--constraint", "fly to the moon"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Closest supported" in err and "Traceback" not in err


@pytest.mark.parametrize("env_id, kwargs", [
    ("embodied/PointPushZoneHazardRows-v0", {}),
    ("embodied/Arm2ReachHazard-v0", {}),
    ("embodied/PointPushZone-v0", {"hazards": 2, "constraints": [KeepOut("blue"), SpeedLimit(0.2), Workspace(0.25)]}),
])
def test_the_state_check_of_the_specs_agrees_with_the_env_costs(env_id, kwargs):
    """What the learned filter reads off imagined states: keep-out, speed and workspace from the state vector alone."""
    env = envs.make(env_id, **kwargs)
    u = env.unwrapped
    check = state_cost(u.constraints)
    rng = np.random.default_rng(0)
    seen = {True: 0, False: 0}
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        expert = envs.ScriptedExpert(env)
        for _ in range(60):
            a = np.clip(expert.predict(obs, deterministic=True)[0] + rng.normal(0, 0.5, u.action_space.shape), -1, 1)
            obs, _, terminated, truncated, info = env.step(a.astype(np.float32))
            truth = any(info[k] > 0 for k in ("cost_hazard", "cost_speed", "cost_workspace"))
            got = check(obs["state"], obs["state"][None, None])
            assert got.shape == (1, 1) and bool(got[0, 0]) == truth
            seen[truth] += 1
            if terminated or truncated:
                break
    assert seen[True] > 5 and seen[False] > 5
    env.close()


def test_the_state_check_reads_only_the_named_zone_and_widens_with_its_margin():
    env = envs.make("embodied/PointPushZone-v0", constraints=[KeepOut("blue")])
    env.reset(seed=3)
    u = env.unwrapped
    blue = u._hazard_pos[0]
    _teleport(env, blue)
    obs, _, _, _, info = env.step(np.zeros(2, np.float32))
    state = obs["state"]
    assert info["cost_hazard"] == 1.0 and KeepOut("blue").state_violation(state, state) and KeepOut().state_violation(state, state)
    red = state.copy()
    hazards = red[state_slices()["hazards"]].reshape(-1, 7)  # a view: (x, y, radius, r, g, b, present) per zone
    hazards[0, 3:6] = COLOURS["red"]
    red[state_slices()["hazards"]] = hazards.reshape(-1)
    assert not KeepOut("blue").state_violation(red, state) and KeepOut("red").state_violation(red, state)
    near = state.copy()
    near[:2] = blue + np.array([0.07 + 0.02, 0.0])  # 2 cm outside the blue zone's edge (radius 7 cm)
    assert not KeepOut("blue").state_violation(state, near) and KeepOut("blue").state_violation(state, near, margin=0.03)
    assert not SpeedLimit(0.3).state_violation(near, near) and Workspace(0.32).state_violation(near, near, margin=0.4)
    assert state_cost([Fragile()]) is None  # contact forces are not in the state: the cost head alone covers them
    env.close()


@pytest.mark.parametrize("env_id", [e.id for e in ENVS.values() if e.kwargs.get("hazards")])
def test_no_episode_starts_inside_a_keep_out_zone(env_id):
    """Keep-out zones are placed clear of the fingertip's start (Safety-Gymnasium's rule): a violation that no policy
    could avoid would put a floor under every cost limit. Before the fix, 29 of 300 PointReach starts with two named
    keep-out zones were inside one."""
    env = envs.make(env_id)
    u = env.unwrapped
    for seed in range(40):
        obs, _ = env.reset(seed=seed)
        state = obs["state"]
        assert not any(c.state_violation(state, state) for c in u.constraints if isinstance(c, KeepOut)), seed
        hazards = state[state_slices()["hazards"]].reshape(-1, 7)
        present = hazards[hazards[:, 6] > 0.5]
        assert len(present) >= 1
        clearance = np.linalg.norm(present[:, :2] - state[state_slices()["ee_pos"]], axis=1) - present[:, 2]
        assert clearance.min() >= 0.05, (seed, clearance)  # 6 cm by construction, less float32 rounding
    env.close()
