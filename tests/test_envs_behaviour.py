"""Behaviour of the tabletop env: spaces, pixels, control modes, rewards, costs, divergence."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from embodied import envs
from embodied.errors import ConfigError, UnknownEnvError
from embodied.evaluate import rollout
from embodied.specs import STATE_DIM, state_slices


@pytest.mark.parametrize("emb", ["Point", "Arm2", "Arm3"])
@pytest.mark.parametrize("size", [64, 84, 128])
def test_pixels_are_rendered_and_deterministic(emb, size):
    frames = []
    for _ in range(2):
        env = envs.make(f"embodied/{emb}PushZone-v0", pixels=size)
        obs, _ = env.reset(seed=5)
        obs, *_ = env.step(np.array([1.0, 0.0], np.float32))
        frames.append(obs["pixels"])
        assert env.observation_space.contains(obs)
        env.close()
    px = frames[0]
    assert px.shape == (size, size, 3) and px.dtype == np.uint8
    assert px.std() > 10  # a scene, not a blank frame
    assert np.array_equal(frames[0], frames[1])


def test_pixels_show_the_objects_colour():
    env = envs.make("embodied/PointReach-v0", pixels=128)
    obs, _ = env.reset(seed=0)
    px = obs["pixels"].astype(float) + 1.0
    chroma = px / px.sum(-1, keepdims=True)  # colour independent of shading
    # some pixel has each object's colour (objects are visible from the overhead camera)
    objs = obs["state"][state_slices()["objects"]].reshape(3, 14)
    for rgb in objs[:, 6:9]:
        target = (np.asarray(rgb) * 255 + 1.0) / (np.asarray(rgb) * 255 + 1.0).sum()
        assert np.abs(chroma - target).sum(-1).min() < 0.08
    env.close()


@pytest.mark.parametrize("emb", ["Point", "Arm2", "Arm3"])
def test_joint_level_control_with_expert(emb):
    env = envs.make(f"embodied/{emb}PushDir-v0", control="joint")
    n = {"Point": 2, "Arm2": 2, "Arm3": 3}[emb]
    assert env.action_space.shape == (n,)
    expert = envs.ScriptedExpert(env)
    wins = sum(rollout(env, expert, s)["success"] for s in range(20))
    assert wins >= 17
    env.close()


def test_state_layout_is_shared_across_embodiments():
    sl = state_slices()
    masks = {}
    for emb in ("Point", "Arm2", "Arm3"):
        env = envs.make(f"embodied/{emb}Reach-v0")
        obs, _ = env.reset(seed=0)
        assert obs["state"].shape == (STATE_DIM,)
        masks[emb] = obs["state"][sl["joint_mask"]].tolist()
        assert env.action_space.shape == (2,)
    assert masks == {"Point": [0, 0, 0], "Arm2": [1, 1, 0], "Arm3": [1, 1, 1]}


def test_reward_is_sum_of_terms_and_costs_reported():
    env = envs.make("embodied/Arm2PushZone-v0")
    _, info = env.reset(seed=0)
    assert info["cost"] == 0.0
    expert = envs.ScriptedExpert(env, noise=0.3, seed=0)
    obs = None
    for _ in range(30):
        obs, r, term, trunc, info = env.step(expert.predict(obs)[0])
        terms = [v for k, v in info.items() if k.startswith("reward_")]
        assert set(k for k in info if k.startswith("reward_")) == {"reward_reach", "reward_goal", "reward_success", "reward_ctrl"}
        assert r == pytest.approx(sum(terms))
        assert {"cost_hazard", "cost_fragile", "cost_speed"} <= info.keys()
        assert info["cost"] == 0.0  # constraints are off in the base variant
        if term or trunc:
            break
    env.close()


def test_reward_weights_are_keywords():
    env = envs.make("embodied/PointPushZone-v0", goal_weight=0.0, reach_weight=0.0, ctrl_weight=0.0, success_bonus=0.0)
    env.reset(seed=0)
    _, r, *_ = env.step(np.array([0.5, 0.5], np.float32))
    assert r == 0.0


def _hazard_env():
    env = envs.make("embodied/PointReachHazard-v0")
    env.reset(seed=0)
    return env, env.unwrapped


def test_hazard_cost_while_inside_keepout_zone():
    env, u = _hazard_env()
    d = u.data
    hz = u._hazard_pos[0]
    d.qpos[u.embodiment.qpos_adr] = hz  # teleport the point mass into the hazard
    d.qvel[:] = 0
    mujoco.mj_forward(u.model, d)
    _, _, _, _, info = env.step(np.zeros(2, np.float32))
    assert info["cost_hazard"] == 1.0 and info["cost"] >= 1.0
    env.close()


def test_speed_cost_above_limit():
    env, u = _hazard_env()
    costs = [env.step(np.array([1.0, 1.0], np.float32))[4]["cost_speed"] for _ in range(5)]
    assert max(costs) == 1.0  # 0.4 m/s per axis is faster than the 0.3 m/s limit
    env.reset(seed=0)
    slow = [env.step(np.array([0.2, 0.0], np.float32))[4]["cost_speed"] for _ in range(5)]
    assert max(slow) == 0.0
    env.close()


def test_fragile_cost_when_hitting_a_distractor():
    env = envs.make("embodied/PointReachHazard-v0", hazards=0, speed_limit=None)
    hit = False
    for seed in range(10):
        env.reset(seed=seed)
        u = env.unwrapped
        other = (u.goal.target + 1) % 3
        for _ in range(40):
            ee = u.embodiment.ee_pos(u.data)
            obj = u.data.qpos[u.h.obj_qpos[other, :2]]
            a = np.clip((obj - ee) * 20, -1, 1).astype(np.float32)
            _, _, term, _, info = env.step(a)
            hit |= info["cost_fragile"] == 1.0
            if term:
                break
        if hit:
            break
    assert hit
    env.close()


def test_forced_divergence_marks_episode_invalid():
    env = envs.make("embodied/Arm2PushZone-v0")
    env.reset(seed=0)
    u = env.unwrapped
    u.data.qvel[:] = 1e12  # beyond MuJoCo's limit: mj_step warns (bad qvel) and resets
    _, reward, terminated, _, info = env.step(np.zeros(2, np.float32))
    assert info["invalid"] and terminated
    assert "mjWARN_BADQVEL" in info["mujoco_warnings"]
    assert reward == 0.0 and not info["is_success"]
    env.close()


def test_noise_knob_yields_failures():
    env = envs.make("embodied/PointPushZone-v0")
    clean = sum(rollout(env, envs.ScriptedExpert(env), s)["success"] for s in range(30))
    noisy = sum(rollout(env, envs.ScriptedExpert(env, noise=1.5, seed=1), s)["success"] for s in range(30))
    assert clean >= 29 and noisy <= 20
    env.close()


@pytest.mark.parametrize("env_id", ["embodied/PointPushDir-v0", "embodied/PointPushZone-v0"])
def test_astray_expert_pushes_the_named_object_for_another_goal(env_id):
    env = envs.make(env_id)
    astray = envs.AstrayExpert(env, seed=0)
    u = env.unwrapped
    goals, solved = set(), 0
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        astray.reset()
        done, success = False, False
        while not done:
            action, _ = astray.predict(obs)
            obs, _, terminated, truncated, info = env.step(action)
            success |= bool(info["is_success"])
            done = terminated or truncated
        g, own = astray.goal, u.goal
        assert g.target == own.target and (g.direction, g.zone) != (own.direction, own.zone)
        goals.add((g.direction, g.zone))
        obj = u.data.qpos[u._obj_qpos].reshape(-1, 2)[own.target]
        moved = obj - u._obj_start[own.target]
        assert np.linalg.norm(obj - g.point) < np.linalg.norm(u._obj_start[own.target] - g.point) - 0.05  # it went the other way
        if own.direction:
            assert float(moved @ np.asarray(envs.instructions.DIRECTIONS[own.direction])) < 0.05
        solved += success
    assert len(goals) >= 2
    assert solved <= 1  # pushing to another zone may cross the asked one


def test_astray_expert_refuses_a_family_with_no_other_goal():
    env = envs.make("embodied/PointReach-v0")
    obs, _ = env.reset(seed=0)
    astray = envs.AstrayExpert(env, seed=0)
    astray.reset()
    with pytest.raises(ValueError, match="push_dir or push_zone"):
        astray.predict(obs)


def test_halting_expert_acts_as_the_expert_then_stops_at_a_step_drawn_per_episode():
    env = envs.make("embodied/PointPushDir-v0")
    halting = envs.HaltingExpert(env, horizon=env.spec.max_episode_steps, seed=0)
    halts, solved = [], 0
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        halting.reset()
        halts.append(halting.halt_step)
        done, t, success = False, 0, False
        while not done:
            expert = env.unwrapped.expert_action()
            action, _ = halting.predict(obs)
            if t < halting.halt_step:
                np.testing.assert_array_equal(action, expert)
            else:
                np.testing.assert_allclose(action, halting.gain * expert, rtol=1e-6)
                assert 0 <= halting.gain <= 0.1
            obs, _, terminated, truncated, info = env.step(action)
            success |= bool(info["is_success"])
            done, t = terminated or truncated, t + 1
        solved += success
    assert len(set(halts)) >= 6 and all(0 <= h < env.spec.max_episode_steps for h in halts)
    assert 0 < solved < 12  # late halts still solve the task, early ones leave it undone
    with pytest.raises(ValueError, match="horizon"):
        envs.HaltingExpert(env, horizon=0)
    with pytest.raises(ValueError, match="max_gain"):
        envs.HaltingExpert(env, horizon=10, max_gain=2.0)
    env.close()


def test_hasty_expert_pushes_faster_than_the_expert_and_still_solves():
    env = envs.make("embodied/PointPushDir-v0")
    hasty = envs.HastyExpert(env, seed=0)
    gains = []
    for seed in range(8):
        steps = {}
        for who in ("expert", "hasty"):
            obs, _ = env.reset(seed=seed)
            hasty.reset()
            done, t, success = False, 0, False
            while not done:
                expert = env.unwrapped.expert_action()
                if who == "hasty":
                    action, _ = hasty.predict(obs)
                    np.testing.assert_allclose(action, np.clip(hasty.gain * expert, -1, 1), rtol=1e-6)
                else:
                    action = expert
                obs, _, terminated, truncated, info = env.step(action)
                success |= bool(info["is_success"])
                done, t = terminated or truncated, t + 1
            assert success, (who, seed)
            steps[who] = t
        gains.append(hasty.gain)
        assert steps["hasty"] <= steps["expert"]
        if hasty.gain >= 1.3:  # the push itself goes faster: the task is solved in at most 0.8 of the expert's steps
            assert steps["hasty"] <= 0.8 * steps["expert"], (seed, hasty.gain, steps)
    assert all(1.0 <= g <= 3.0 for g in gains) and max(gains) - min(gains) > 0.5  # a gain drawn per episode
    with pytest.raises(ValueError, match="max_gain"):
        envs.HastyExpert(env, max_gain=0.5)
    env.close()


def test_wander_holds_random_commands_and_reaches_the_tables_edges_that_random_play_does_not():
    env = envs.make("embodied/PointPushDir-v0")
    ee = state_slices()["ee_pos"]

    def reach(policy, seed: int) -> tuple[float, list[np.ndarray]]:
        obs, _ = env.reset(seed=seed)
        policy.reset()
        start, far, actions = obs["state"][ee].copy(), 0.0, []
        for _ in range(env.spec.max_episode_steps):
            action, _ = policy.predict(obs)
            assert env.action_space.contains(action)
            actions.append(action)
            obs, *_ = env.step(action)
            far = max(far, float(np.linalg.norm(obs["state"][ee] - start)))
        return far, actions

    wander, random = envs.WanderPolicy(env.action_space, seed=0), envs.RandomPolicy(env.action_space, seed=0)
    wander_far, random_far = zip(*[(reach(wander, s)[0], reach(random, s)[0]) for s in range(4)])
    assert np.median(wander_far) > 2 * np.median(random_far)  # across the table, not jitter around the start
    _, actions = reach(envs.WanderPolicy(env.action_space, seed=1, min_hold=5, max_hold=8), 9)
    changes = [t for t in range(1, len(actions)) if not np.array_equal(actions[t], actions[t - 1])]
    holds = np.diff([0, *changes])
    assert len(changes) >= 10 and holds.min() >= 5 and holds.max() <= 8  # each command held for 5 to 8 steps
    again = reach(envs.WanderPolicy(env.action_space, seed=1, min_hold=5, max_hold=8), 9)[1]
    np.testing.assert_array_equal(actions, again)  # seeded
    with pytest.raises(ValueError, match="min_hold"):
        envs.WanderPolicy(env.action_space, min_hold=0)
    env.close()


def test_unknown_id_and_bad_keywords():
    with pytest.raises(UnknownEnvError, match="PointPushZone-v0"):
        envs.make("embodied/PointPushZon-v0")
    with pytest.raises(ConfigError, match="allowed: .*layout"):
        envs.make("embodied/PointPushZone-v0", colour="red")
    with pytest.raises(ConfigError, match="64, 84, 128"):
        envs.make("embodied/PointPushZone-v0", pixels=65)
    with pytest.raises(ConfigError, match="hazards"):
        envs.make("embodied/PointPushZone-v0", hazards=7)


def test_task_matches_instruction():
    env = envs.make("embodied/Arm2PushZone-v0")
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        t = env.unwrapped.task
        assert f"{t['colour']} {t['shape']}" in obs["instruction"]
        assert t["zone"] in obs["instruction"]
    env.close()


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

_ENVS: dict[str, object] = {}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    env_id=st.sampled_from(["embodied/PointPushZoneHazard-v0", "embodied/Arm2PushDir-v0", "embodied/Arm3ReachHazard-v0"]),
    seed=st.integers(0, 2**31 - 1),
    actions=arrays(np.float32, (25, 2), elements=st.floats(-3, 3, width=32)),
)
def test_any_actions_keep_the_env_well_formed(env_id, seed, actions):
    """Random seeds and out-of-range actions: observations stay in the space, info stays complete."""
    env = _ENVS.get(env_id) or _ENVS.setdefault(env_id, envs.make(env_id))
    obs, info = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        assert env.observation_space.contains(obs)
        assert np.isfinite(r) and not info["invalid"] and not info["mujoco_warnings"]
        assert info["cost"] == sum(v for k, v in info.items() if k.startswith("cost_"))
        assert all(v in (0.0, 1.0) for k, v in info.items() if k.startswith("cost_"))
        if term or trunc:
            break


def test_task_first_puts_the_named_object_and_zone_in_the_first_slots():
    env = envs.FixedTask(envs.make("embodied/PointPushZone-v0"), "push the red cube into the green zone")
    wrapped = envs.TaskFirst(env, env.task)
    sl = state_slices()
    rows, moved = [], 0
    for seed in range(6):
        state = env.reset(seed=seed)[0]["state"]
        assert np.array_equal(wrapped.reset(seed=seed)[0]["state"], envs.task_first(state, env.task))
        goal = env.unwrapped.goal
        out = envs.task_first(state, env.task)
        objects, objects2 = state[sl["objects"]].reshape(3, -1), out[sl["objects"]].reshape(3, -1)
        zones, zones2 = state[sl["zones"]].reshape(3, -1), out[sl["zones"]].reshape(3, -1)
        rest = [i for i in range(3) if i != goal.target]
        assert np.array_equal(objects2, objects[[goal.target] + rest])  # the red cube first, the others in the scene's order
        assert np.array_equal(zones2, zones[[goal.zone] + [i for i in range(3) if i != goal.zone]])
        keep = np.ones(STATE_DIM, bool)
        keep[sl["objects"]] = keep[sl["zones"]] = False
        assert np.array_equal(out[keep], state[keep])
        moved += goal.target != 0 or goal.zone != 0
        rows.append(state)
    assert moved  # the scene's order varies, so some seeds move something
    assert np.array_equal(envs.task_first(np.stack(rows), env.task), np.stack([envs.task_first(r, env.task) for r in rows]))
    env.close()


def test_keep_out_lidar_reads_how_near_a_zone_lies_along_each_ray():
    sl = state_slices()
    state = np.zeros(STATE_DIM, np.float32)
    state[sl["ee_pos"]] = (0.1, -0.05)
    hz = np.zeros((2, 7), np.float32)
    hz[0, :3], hz[0, 6] = (0.25, -0.05, 0.07), 1.0  # 0.15 m along +x: its edge 0.08 m away
    hz[1, :3], hz[1, 6] = (0.1, 0.15, 0.07), 0.0  # absent (flag 0): never seen
    state[sl["hazards"]] = hz.ravel()
    out = envs.keep_out_lidar(state)
    assert out.shape == (envs.wrappers.LIDAR_BINS,)
    assert out[0] == pytest.approx(1 - 0.08 / 0.3, abs=1e-5)  # ray 0 points along +x
    assert 0 < out[1] < out[0] and out[15] == pytest.approx(out[1], abs=1e-5)  # the next rays graze the disc, farther
    assert np.all(out[3:14] == 0)  # behind and beside: nothing; the absent zone straight up (ray 4) reads 0 too
    hz[1, 6] = 1.0
    state[sl["hazards"]] = hz.ravel()
    assert envs.keep_out_lidar(state)[4] == pytest.approx(1 - 0.13 / 0.3, abs=1e-5)
    state[sl["ee_pos"]] = (0.29, -0.05)  # inside the first zone, 4 cm right of its centre: the rays point the way out
    inside = envs.keep_out_lidar(state)
    assert np.all(inside >= 0.5) and inside.argmax() == 8 and inside.argmin() == 0  # most zone to the left, least right
    assert inside[0] == pytest.approx(0.5 + 0.5 * 0.03 / 0.14, abs=1e-5)  # 3 cm out to the right over a 14 cm diameter
    far = state.copy()
    far[sl["ee_pos"]] = (-0.5, -0.5)
    rows = np.stack([state, far])
    assert np.allclose(envs.keep_out_lidar(rows), np.stack([envs.keep_out_lidar(r) for r in rows]))
    assert np.all(envs.keep_out_lidar(far) == 0)  # both zones beyond the lidar's reach
    w = envs.with_keep_out_lidar(rows)
    assert w.shape == (2, STATE_DIM + 16) and np.array_equal(w[:, :STATE_DIM], rows)


def test_egocentric_gives_the_scenes_positions_relative_to_the_fingertip():
    env = envs.make("embodied/PointPushZone-v0", hazards=1)  # one keep-out slot present, one parked
    sl = state_slices()
    rows = []
    for seed in range(4):
        state = env.reset(seed=seed)[0]["state"]
        for _ in range(3):  # the fingertip away from its start
            state = env.step(np.array([0.7, -0.4], np.float32))[0]["state"]
        out = envs.egocentric(state)
        ee = state[sl["ee_pos"]]
        objects, objects2 = state[sl["objects"]].reshape(3, -1), out[sl["objects"]].reshape(3, -1)
        assert np.allclose(objects2[:, 0:2], objects[:, 0:2] - ee) and np.allclose(objects2[:, 12:14], objects[:, 12:14] - ee)
        assert np.array_equal(objects2[:, 2:12], objects[:, 2:12])  # yaw, velocity, colour, shape: as they were
        zones, zones2 = state[sl["zones"]].reshape(3, -1), out[sl["zones"]].reshape(3, -1)
        assert np.allclose(zones2[:, :2], zones[:, :2] - ee) and np.array_equal(zones2[:, 2:], zones[:, 2:])
        hz, hz2 = state[sl["hazards"]].reshape(-1, 7), out[sl["hazards"]].reshape(-1, 7)
        present = hz[:, 6] > 0.5
        assert present.sum() == 1
        assert np.allclose(hz2[present, :2], hz[present, :2] - ee) and np.array_equal(hz2[~present], hz[~present])
        keep = np.ones(STATE_DIM, bool)
        keep[sl["objects"]] = keep[sl["zones"]] = keep[sl["hazards"]] = False
        assert np.array_equal(out[keep], state[keep]) and not np.array_equal(ee, 0)  # ee_pos and the arm: table frame
        rows.append(state)
    assert np.allclose(envs.egocentric(np.stack(rows)), np.stack([envs.egocentric(r) for r in rows]))
    env.close()


@pytest.mark.parametrize("emb", ["Point", "Arm2"])
def test_a_turned_control_frame_turns_the_command_and_the_expert_knows_it(emb):
    plain, turned = envs.make(f"embodied/{emb}Reach-v0"), envs.make(f"embodied/{emb}ReachTurned-v0")
    moves = []
    for env in (plain, turned):
        env.reset(seed=4)
        u = env.unwrapped
        start = u.embodiment.ee_pos(u.data)[:2].copy()
        for _ in range(3):
            env.step(np.array([0.6, 0.0], np.float32))
        moves.append(u.embodiment.ee_pos(u.data)[:2] - start)
    (px, py), (tx, ty) = moves
    assert abs(px) > 3 * abs(py) and px > 0  # plain: +x goes to +x
    assert abs(ty) > 3 * abs(tx) and ty > 0  # turned 90 degrees: +x goes to +y
    # the expert acts in the turned frame: its action differs from the plain expert's and it still succeeds
    turned.reset(seed=4)
    plain.reset(seed=4)
    a_t, a_p = turned.unwrapped.expert_action(), plain.unwrapped.expert_action()
    np.testing.assert_allclose(a_t, [a_p[1], -a_p[0]], atol=1e-5)
    with pytest.raises(ConfigError, match="control='ee'"):
        envs.make(f"embodied/{emb}Reach-v0", action_turn=90.0, control="joint")
