"""Safety filters: properties of the candidate filter (Hypothesis), the MuJoCo lookahead, the model's predictor,
filtered rollouts and their metrics, `embodied eval --shield`, and the report section."""

from __future__ import annotations

import json
import time

import mujoco
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embodied import specs
from embodied.cli import main
from embodied.config import preset
from embodied.envs import ScriptedExpert, make
from embodied.envs.lookahead import SimLookahead
from embodied.errors import ConfigError
from embodied.evaluate import mean_interval, rollout, run_episodes, safety_stats
from embodied.model import TrajectoryModel
from embodied.policies import FoundationPolicy
from embodied.policies.safety import FALLBACKS, CandidateFilter, FilterConfig, ModelCostPredictor, NoFilter, candidate_actions, sequences
from embodied.report import build_report
from embodied.shielding import ShieldSpec, shield_factory
from conftest import fake_encode as _encode


class FieldPredictor:
    """A predictor whose cost of a sequence is a fixed function of its first action; it counts what it was asked."""

    def __init__(self, cost):
        self.cost, self.calls, self.sequences = cost, 0, 0
        self.committed = []

    def reset(self):
        self.committed = []

    def observe(self, observation):
        pass

    def predict(self, candidates):
        self.calls += 1
        self.sequences += len(candidates)
        return np.array([self.cost(c[0]) for c in candidates])

    def commit(self, action):
        self.committed.append(action)


actions = st.lists(st.floats(-1, 1), min_size=2, max_size=2).map(lambda v: np.array(v, np.float32))
half_planes = st.tuples(st.floats(-np.pi, np.pi), st.floats(-1.2, 1.2))  # unsafe where a . u > offset


@settings(max_examples=150, deadline=None)
@given(proposal=actions, plane=half_planes, fallback=st.sampled_from(sorted(FALLBACKS)), chunk=st.sampled_from([0, 1, 8]),
       plan=st.sampled_from(["hold", "brake"]))
def test_filter_properties(proposal, plane, fallback, chunk, plan):
    angle, offset = plane
    u = np.array([np.cos(angle), np.sin(angle)])
    pred = FieldPredictor(lambda a: float(a @ u - offset) + 1.0 if a @ u > offset else 0.0)
    cfg = FilterConfig(horizon=3, threshold=0.5, fallback=fallback, chunk=chunk, plan=plan)
    f = CandidateFilter(pred, cfg)
    out, info = f.filter({}, proposal)
    cands = candidate_actions(proposal, cfg.directions, cfg.speeds)
    costs = np.array([pred.cost(c) for c in cands])
    safe = costs < cfg.threshold
    assert out.shape == (2,) and out.dtype == np.float32 and np.all(np.abs(out) <= 1)
    assert np.array_equal(pred.committed[-1], out)
    if safe[0]:  # its own check calls the proposal safe: unchanged, and nothing else was asked
        assert np.array_equal(out, np.clip(proposal, -1, 1)) and not info["intervened"] and pred.sequences == 1
    elif safe.any():  # never an unsafe action while a safe candidate exists; the nearest safe one
        assert pred.cost(out) < cfg.threshold and info["intervened"] and not info["fallback"]
        nearest = np.min(np.linalg.norm(cands[safe] - np.clip(proposal, -1, 1), axis=1))
        assert np.linalg.norm(out - np.clip(proposal, -1, 1)) <= nearest + 1e-6
    else:  # none safe: the fallback, defined and used
        assert info["fallback"] and info["intervened"]
        if fallback == "stop":
            assert np.array_equal(out, np.zeros(2))
        else:
            assert pred.cost(out) == pytest.approx(costs[1:].min())
    assert pred.sequences <= len(cands)  # bounded work: each candidate is imagined at most once per step


def test_no_filter_and_sequences():
    out, info = NoFilter().filter({}, np.array([0.3, -2.0]))
    assert np.allclose(out, [0.3, -2.0]) and not info["intervened"]
    seq = sequences(np.array([[0.5, 0.5]]), 3, "brake")
    assert seq.shape == (1, 3, 2) and np.allclose(seq[0, 0], 0.5) and np.allclose(seq[0, 1:], 0)
    with pytest.raises(Exception, match="plan"):
        FilterConfig(plan="pray")


def test_stop_action_brings_the_fingertip_to_rest():
    for env_id in ("embodied/PointReach-v0", "embodied/Arm2Reach-v0", "embodied/Arm3Reach-v0"):
        env = make(env_id)
        env.reset(seed=0)
        for _ in range(5):
            env.step(np.array([1.0, -1.0], np.float32))
        u = env.unwrapped
        assert np.hypot(*u.embodiment.ee_vel(u.data)) > 0.2
        for _ in range(3):
            env.step(np.zeros(2, np.float32))
        assert np.hypot(*u.embodiment.ee_vel(u.data)) < 0.02
        env.close()


def test_lookahead_of_one_step_equals_the_env_step():
    env = make("embodied/Arm2PushZoneHazard-v0")
    env.reset(seed=1)
    look = SimLookahead(env)
    expert = ScriptedExpert(env, noise=0.5, seed=0)
    obs = None
    for _ in range(40):
        a = expert.predict(obs)[0]
        predicted = look.predict(a[None, None])[0]
        state_before = env.unwrapped.data.qpos.copy()
        obs, _, term, trunc, info = env.step(a)
        assert predicted == info["cost"]
        assert np.array_equal(look.scratch.qpos, env.unwrapped.data.qpos) and not np.array_equal(state_before, env.unwrapped.data.qpos)
        if term or trunc:
            break
    env.close()


def test_sim_filter_keeps_the_fingertip_out_of_a_keep_out_zone_in_bounded_time():
    env = make("embodied/PointReach-v0", hazards=1)
    shield = shield_factory("sim")(env)
    cfg = shield.cfg
    n_cands = len(candidate_actions(np.ones(2), cfg.directions, cfg.speeds))
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        u = env.unwrapped
        out = u._hazard_pos[0] / np.linalg.norm(u._hazard_pos[0])
        _teleport(env, u._hazard_pos[0] - 0.15 * out)  # 8 cm on the centre's side of the zone's edge, heading into it
        shield.reset()
        worst, intervened = 0.0, 0
        for _ in range(20):
            steps0, t0 = shield.predictor.steps, time.perf_counter()
            a, info = shield.filter(obs, (0.7 * out).astype(np.float32))
            worst = max(worst, time.perf_counter() - t0)
            assert shield.predictor.steps - steps0 <= n_cands * cfg.horizon
            obs, _, _, _, step_info = env.step(a)
            assert step_info["cost_hazard"] == 0.0
            intervened += info["intervened"]
        assert intervened
    assert worst < 2.0  # a loose wall-clock bound (the step count above is the real one)
    env.close()


def _teleport(env, xy):
    u = env.unwrapped
    u.data.qpos[u.embodiment.qpos_adr] = xy
    u.data.qvel[:] = 0
    mujoco.mj_forward(u.model, u.data)


def test_model_predictor_is_a_probability_consistent_across_batching():
    torch.manual_seed(0)
    model = TrajectoryModel(preset("tiny"))
    pred = ModelCostPredictor(model, _encode)
    env = make("embodied/PointReachHazard-v0")
    obs, _ = env.reset(seed=0)
    seqs = sequences(candidate_actions(np.array([0.5, 0.2]))[:6], 3)
    with torch.inference_mode():  # one step from the first observation: the cost heads' probability at the action token
        cache = model.step(model.start(torch.as_tensor(_encode([obs["instruction"]]))), torch.as_tensor(obs["state"][None]), torch.tensor([0]))[1]
        o = model.act(cache, torch.as_tensor(seqs[:1, 0]), torch.tensor([0]))[0]
        any_term = 1 - torch.prod(1 - torch.sigmoid(o["term_logits"]), dim=-1)  # the named terms: P(any of them)
        first = torch.maximum(torch.sigmoid(o["cost_logit"]), any_term).item()
    for t in range(3):
        pred.observe(obs)
        together = pred.predict(seqs)
        alone = np.array([pred.predict(s[None])[0] for s in seqs])
        assert together.shape == (6,) and np.all((together >= 0) & (together <= 1))
        np.testing.assert_allclose(together, alone, atol=1e-5)
        if t == 0:
            assert pred.predict(seqs[:1, :1])[0] == pytest.approx(first, abs=1e-5)
        pred.commit(seqs[0, 0])
        obs = env.step(seqs[0, 0].astype(np.float32))[0]
    with pytest.raises(RuntimeError, match="observe"):
        ModelCostPredictor(model, _encode).predict(seqs)
    env.close()


def test_policy_context_holds_the_executed_action():
    torch.manual_seed(0)
    model = TrajectoryModel(preset("tiny"))
    env = make("embodied/PointReach-v0")
    obs, _ = env.reset(seed=0)
    p1, p2 = FoundationPolicy(model, _encode), FoundationPolicy(model, _encode, use_cache=False)
    for p in (p1, p2):
        p.predict(obs, deterministic=True)
        p.executed(np.array([0.25, -0.5], np.float32))
    assert torch.equal(p1._episodes[0].last_action, torch.tensor([[0.25, -0.5]]))
    obs2 = env.step(np.array([0.25, -0.5], np.float32))[0]
    a1, a2 = p1.predict(obs2, deterministic=True)[0], p2.predict(obs2, deterministic=True)[0]
    assert np.allclose(a1, a2)  # the cached and the full context agree on what ran
    assert torch.equal(p2._episodes[0].actions[0], torch.tensor([[0.25, -0.5]]))
    env.close()


def test_safety_stats_and_filtered_lockstep_rollouts():
    runs = [{"violations": v, "interventions": k} for v, k in ((0, 3), (2, 5), (0, 1), (1, 0))]
    s = safety_stats(runs)
    assert s["violations_per_episode"] == 0.75 and s["violation_rate"] == 0.5 and s["interventions_per_episode"] == 2.25
    lo, hi = s["violations_per_episode_ci"]
    assert lo < 0.75 < hi and mean_interval([1.0]) == (1.0, 1.0) and s["violation_rate_ci"][0] < 0.5 < s["violation_rate_ci"][1]

    torch.manual_seed(0)
    policy = FoundationPolicy(TrajectoryModel(preset("tiny")), _encode)
    envs_ = [make("embodied/PointReachHazard-v0", max_episode_steps=10) for _ in range(2)]
    seeds = specs.eval_seeds(3)
    plain = run_episodes(envs_, policy, seeds)
    shielded = run_episodes(envs_, policy, seeds, shields=[shield_factory("sim")(e) for e in envs_])
    assert all(r["violations"] == r["cost"] + r["invalid"] for r in plain + shielded)
    assert all(sum(r["cost_terms"].values()) == r["cost"] and set(r["cost_terms"]) == set(specs.COST_TERMS) for r in plain + shielded)
    by_term = safety_stats(plain)["violations_by_term"]  # which constraint the violations came from
    assert by_term["cost_speed"] > 0 and sum(by_term.values()) == pytest.approx(np.mean([r["cost"] for r in plain]))
    assert all("interventions" in r for r in shielded) and not any("interventions" in r for r in plain)
    assert sum(r["violations"] for r in shielded) < sum(r["violations"] for r in plain)  # random-weight actions break the speed limit
    single = rollout(envs_[0], ScriptedExpert(envs_[0]), seeds[0], shield=shield_factory("sim")(envs_[0]))
    assert single["interventions"] == len(single["intervened_steps"]) and sum(single["cost_terms"].values()) == single["cost"]
    for e in envs_:
        e.close()


def test_cli_eval_with_a_shield_and_a_constraint_and_the_report(tiny_run, tmp_path, capsys):
    run, out = str(tiny_run), tmp_path / "eval"
    assert main(["eval", "--ckpt", run, "--env", "embodied/PointReach-v0", "--episodes", "2", "--envs", "2", "--shield", "sim",
                 "--constraint", "move slowly", "--videos", "1", "--json", "--out", str(out)]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    for key in ("violations_per_episode", "violation_rate", "interventions_per_episode", "success", "violations_per_episode_ci"):
        assert key in row
    assert row["shield"] == "sim" and row["constraints"] == ["move at most 0.2 m/s"] and "interventions" in row["videos"][0]
    report = tmp_path / "r.html"
    build_report([str(out)], str(report))
    html = report.read_text()
    assert "violations / episode" in html and "move at most 0.2 m/s" in html and "red border" in html
    with pytest.raises(ConfigError, match="unknown shield 'lava'"):
        shield_factory("lava")
    assert main(["eval", "--ckpt", run, "--env", "embodied/PointReach-v0", "--constraint", "sing a song"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Closest supported" in err[0]


def test_learned_predictor_checks_the_specs_on_its_imagined_states_and_asks_the_head_the_rest():
    """With a state check, each imagined step costs the larger of the check and the cost head's word on the terms the
    state cannot show; the shield wires the env's specs in (keep-out and workspace checked, the rest to the head)."""
    torch.manual_seed(0)
    model = TrajectoryModel(preset("tiny"))
    env = make("embodied/PointReachHazard-v0")  # keep-out, fragile, speed limit, workspace
    obs, _ = env.reset(seed=0)
    seqs = sequences(candidate_actions(np.array([0.5, 0.2]))[:5], 3)
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def second_step_only(current, states):
        seen.append((current, states))
        out = np.zeros(states.shape[:2])
        out[1:, 1] = 1.0  # every candidate but the first violates at its second imagined step
        return out

    plain = ModelCostPredictor(model, _encode)
    checked = ModelCostPredictor(model, _encode, state_cost=second_step_only, head_terms=[])
    fragile = ModelCostPredictor(model, _encode, state_cost=second_step_only, head_terms=["cost_fragile"])
    for p in (plain, checked, fragile):
        p.observe(obs)
    head, alone, both = plain.predict(seqs), checked.predict(seqs), fragile.predict(seqs)
    assert alone[0] == 0.0 and np.all(alone[1:] == 1.0)  # no head terms: the check alone
    with torch.inference_mode():
        imagined = model.imagine(fragile._cache, fragile._state, torch.tensor([0]), torch.as_tensor(seqs, dtype=torch.float32), observed=True)
    p_fragile = imagined["cost_terms"][0, :, specs.COST_TERMS.index("cost_fragile")].double().numpy()
    assert both[0] == pytest.approx(1 - np.prod(1 - p_fragile)) and np.all(both[1:] == 1.0)
    assert 0 < head[0] < 1 and head[0] != pytest.approx(both[0])  # the head alone reads every term
    current, states = seen[0]
    np.testing.assert_allclose(current, obs["state"], atol=1e-6)
    assert states.shape == (5, 3, specs.STATE_DIM)
    with pytest.raises(ValueError, match="unknown cost terms"):
        ModelCostPredictor(model, _encode, head_terms=["cost_lava"])

    learned = shield_factory("learned", ShieldSpec(model=model, encode=_encode))(env).predictor
    assert learned.state_cost is not None and learned.head_terms == [specs.COST_TERMS.index(t) for t in ("cost_fragile", "cost_speed")]
    head_only = shield_factory("learned", ShieldSpec(model=model, encode=_encode, config=FilterConfig(state_checks=())))(env).predictor
    assert head_only.state_cost is None and head_only.head_terms is None
    free = make("embodied/PointReach-v0")  # no constraints: nothing to veto
    unconstrained = shield_factory("learned", ShieldSpec(model=model, encode=_encode))(free).predictor
    unconstrained.observe(free.reset(seed=0)[0])
    assert unconstrained.head_terms == [] and np.all(unconstrained.predict(seqs) == 0.0)
    free.close()
    with pytest.raises(ConfigError, match="unknown constraint kinds"):
        shield_factory("learned", ShieldSpec(model=model, encode=_encode, config=FilterConfig(state_checks=("lava",))))(env)
    with pytest.raises(ConfigError, match="margin"):
        FilterConfig(constraint_margin=-0.1)
    env.close()
