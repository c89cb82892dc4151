"""`embodied collect`: recorded episodes, provenance, regeneration, append/resume, workers, invalid episodes, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embodied import specs
from embodied.cli import main
from embodied.collect import CollectSpec, collect, parse_policy, record_episode, regenerate
from embodied.datasets.sampler import SamplerConfig, WindowSampler
from embodied.datasets.store import EpisodeStore, StoreError
from embodied.errors import ConfigError

ENVS = ("embodied/PointReach-v0", "embodied/Arm2PushZone-v0")


def test_collect_records_frames_and_provenance_and_regenerates(tmp_path):
    out = str(tmp_path / "d.zarr")
    r = collect(CollectSpec(out=out, env_ids=ENVS, episodes=4, policy="noisy:0.3", seed=7), progress=False)
    assert r["episodes"] == r["valid"] == 4 and r["total_episodes"] == 4
    with EpisodeStore.open(out) as s:
        assert len(s) == 4 and s.attrs["provenance"]["collect_seed"] == 7
        for i in range(4):
            m, ep = s.meta(i), s.episode(i)
            assert m["env_id"] == ENVS[i % 2] and m["policy"] == "noisy:0.3" and m["source"] == "collect:noisy:0.3"
            assert m["seed"] == specs.collection_seed(7, i) and m["collect_index"] == i
            assert m["instruction"] and m["valid"] and m["has_actions"]
            n = m["length"]
            assert n == m["steps"] + 1 and ep["state"].shape == (n, specs.STATE_DIM)
            assert ep["action_mask"].sum() == n - 1 and not ep["action_mask"][-1]
            assert np.isclose(np.nansum(ep["reward"]), m["return"], atol=1e-4)
            assert bool(ep["success"][n - 2]) == m["success"]
            again = regenerate(m)  # the recorded seed and policy give the same episode, bit for bit
            for k, x in again.items():
                assert np.array_equal(ep[k][: len(x)], x), k
            # the noisy expert's own actions, and what the expert would have done at each of those states
            acted, label = ep["action"][: n - 1], ep["expert_action"][: n - 1]
            assert np.abs(acted - label).max() > 0.05 and np.abs(label).max() <= 1.0
            assert set(again) >= {"expert_action", "action"}


def test_halt_collection_stops_each_episode_at_its_own_step_and_regenerates(tmp_path):
    out = str(tmp_path / "h.zarr")
    collect(CollectSpec(out=out, env_ids=("embodied/PointPushDir-v0",), episodes=4, policy="halt", seed=3), progress=False)
    rests = []
    with EpisodeStore.open(out) as s:
        for i in range(4):
            m, ep = s.meta(i), s.episode(i)
            acted, expert = ep["action"][: m["steps"]], ep["expert_action"][: m["steps"]]
            assert m["policy"] == "halt" and m["steps"] > 0
            # the expert's own actions up to the halt, then a fixed fraction (at most 0.1) of them
            same = np.all(acted == expert, axis=1)
            rest = int(np.argmin(same)) if not same.all() else len(acted)
            assert same[:rest].all() and rest < 50  # halts fall in the first half of the 100-step limit
            if rest < len(acted):
                ratio = np.linalg.norm(acted[rest:], axis=1).sum() / max(np.linalg.norm(expert[rest:], axis=1).sum(), 1e-9)
                assert ratio <= 0.1 + 1e-6
                np.testing.assert_allclose(acted[rest:], ratio * expert[rest:], atol=1e-5)
            rests.append(rest)
            again = regenerate(m)
            assert np.array_equal(ep["action"][: len(again["action"])], again["action"])
    assert len(set(rests)) > 1


def test_wander_collection_regenerates_and_its_actions_train_no_policy(tmp_path):
    from embodied.training_data import imitation_mask

    out = str(tmp_path / "w.zarr")
    collect(CollectSpec(out=out, env_ids=("embodied/PointReach-v0",), episodes=2, policy="wander", seed=2), progress=False)
    with EpisodeStore.open(out) as s:
        for i in range(2):
            m, ep = s.meta(i), s.episode(i)
            assert m["policy"] == "wander"
            again = regenerate(m)
            assert np.array_equal(ep["action"][: len(again["action"])], again["action"])
            assert (np.diff(ep["action"][: m["steps"]], axis=0) == 0).all(1).mean() > 0.5  # commands are held
    assert imitation_mask(["expert", "wander", "halt", "noisy:0.3", "random", "hasty"], "clean").tolist() == [True] + [False] * 5


def test_hasty_collection_sends_the_experts_command_sped_up_and_regenerates(tmp_path):
    out = str(tmp_path / "f.zarr")
    collect(CollectSpec(out=out, env_ids=("embodied/PointPushDir-v0",), episodes=3, policy="hasty", seed=4), progress=False)
    gains = []
    with EpisodeStore.open(out) as s:
        for i in range(3):
            m, ep = s.meta(i), s.episode(i)
            acted, expert = ep["action"][: m["steps"]], ep["expert_action"][: m["steps"]]
            assert m["policy"] == "hasty" and m["success"]
            free = (np.abs(acted) < 0.999) & (np.abs(expert) > 0.05)  # below the clip: the expert's command times one gain
            gain = float(np.median(acted[free] / expert[free]))
            assert 1.0 <= gain <= 3.0
            np.testing.assert_allclose(acted, np.clip(gain * expert, -1, 1), atol=1e-4)
            gains.append(gain)
            again = regenerate(m)
            assert np.array_equal(ep["action"][: len(again["action"])], again["action"])
    assert max(gains) - min(gains) > 0.1  # drawn per episode


def test_append_resumes_numbering_with_new_seeds(tmp_path):
    out = str(tmp_path / "d.zarr")
    collect(CollectSpec(out=out, env_ids=ENVS[:1], episodes=2), progress=False)
    with pytest.raises(StoreError, match="--append"):
        collect(CollectSpec(out=out, env_ids=ENVS[:1], episodes=2), progress=False)
    r = collect(CollectSpec(out=out, env_ids=ENVS[:1], episodes=3, append=True), progress=False)
    assert r["first_index"] == 2 and r["total_episodes"] == 5
    with EpisodeStore.open(out) as s:
        assert [m["collect_index"] for m in s.metas()] == [0, 1, 2, 3, 4]
        assert len({m["seed"] for m in s.metas()}) == 5
    with pytest.raises(StoreError, match="pixels"):
        collect(CollectSpec(out=out, env_ids=ENVS[:1], episodes=1, append=True, pixels=64), progress=False)


def test_worker_processes_give_the_same_episodes_as_one_process(tmp_path):
    one, two = str(tmp_path / "one.zarr"), str(tmp_path / "two.zarr")
    collect(CollectSpec(out=one, env_ids=ENVS, episodes=4, policy="noisy:0.5", pixels=64, workers=1), progress=False)
    collect(CollectSpec(out=two, env_ids=ENVS, episodes=4, policy="noisy:0.5", pixels=64, workers=2), progress=False)
    with EpisodeStore.open(one) as a, EpisodeStore.open(two) as b:
        assert len(a) == len(b) == 4
        for i in range(4):
            ea, eb = a.episode(i), b.episode(i)
            assert a.meta(i)["seed"] == b.meta(i)["seed"]
            assert all(np.array_equal(ea[k], eb[k], equal_nan=True) for k in ea)
        assert a.episode(0)["pixels"].shape[1:] == (64, 64, 3)


class _DivergingPolicy:
    """Drives the env for two steps, then blows up its velocities (MuJoCo resets: a diverged episode)."""

    def __init__(self, env):
        self.env, self.n = env, 0

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        self.n += 1
        if self.n == 3:
            self.env.unwrapped.data.qvel[:] = 1e12
        return np.zeros(2, np.float32), None


def test_diverged_episode_is_stored_invalid_and_never_sampled(tmp_path):
    from embodied.datasets.store import default_features
    from embodied.envs import make

    env = make("embodied/Arm2PushZone-v0")
    steps, summary = record_episode(env, _DivergingPolicy(env), seed=0)
    env.close()
    assert summary["valid"] is False and "mjWARN_BADQVEL" in summary["warnings"]
    out = str(tmp_path / "d.zarr")
    with EpisodeStore.create(out, default_features()) as w:
        w.add_episode(steps, summary)
        env = make("embodied/PointReach-v0")
        from embodied.envs import ScriptedExpert

        good, meta = record_episode(env, ScriptedExpert(env), seed=1)
        env.close()
        w.add_episode(good, meta)
        assert w.stats()["state"].count == len(good["state"])  # the diverged frames stay out of the statistics
    s = WindowSampler(out, SamplerConfig(window=2, batch_size=16))
    assert s.episodes == [(0, 1)]


def test_an_rl_runs_policy_collects_on_its_task_as_it_acted_and_regenerates(tmp_path, capsys):
    from embodied.rl import RLSpec, load_rl_policy, train_rl
    from embodied.training_data import imitation_mask

    instruction = "push the red cube to the right"
    run = tmp_path / "rl"
    train_rl(RLSpec(env_id="embodied/PointPushDir-v0", instruction=instruction, reward="true", steps=256, n_envs=1, episodes=1,
                    device="cpu", egocentric=True), run)
    out = str(tmp_path / "rl.zarr")
    collect(CollectSpec(out=out, env_ids=("embodied/PointPushDir-v0",), episodes=2, policy=f"rl:{run}", seed=6), progress=False)
    policy, _ = load_rl_policy(run)
    with EpisodeStore.open(out) as s:
        for i in range(2):
            m, ep = s.meta(i), s.episode(i)
            assert m["policy"] == f"rl:{run}" and m[specs.INSTRUCTION] == instruction  # every episode on the run's task
            n = m["steps"]
            acted = np.stack([policy.predict({"state": st})[0] for st in ep["state"][:n]])
            np.testing.assert_allclose(ep["action"][:n], acted, atol=1e-6)  # what the run's policy does in those states
            assert ep["expert_action"][:n].shape == (n, specs.ACTION_DIM)  # the expert's labels, for whoever imitates
            again = regenerate(m)
            assert np.array_equal(ep["action"][: len(again["action"])], again["action"])
    assert imitation_mask([f"rl:{run}"], "clean").tolist() == [False]  # its actions train no policy
    assert main(["collect", "--env", "embodied/PointReach-v0", "--policy", f"rl:{run}", "--episodes", "1", "--out", str(tmp_path / "x.zarr")]) == 2
    assert "trained on embodied/PointPushDir-v0" in capsys.readouterr().err
    assert main(["collect", "--env", "embodied/PointPushDir-v0", "--policy", f"rl:{tmp_path}/none", "--episodes", "1", "--out", str(tmp_path / "y.zarr")]) == 2
    assert "no rl.json" in capsys.readouterr().err


def test_policies_parse_or_fail_clearly():
    assert parse_policy("expert") == ("expert", 0.0)
    assert parse_policy("noisy:0.25") == ("expert", 0.25)
    assert parse_policy("random") == ("random", 0.0)
    assert parse_policy("halt") == ("halt", 0.0)
    assert parse_policy("wander") == ("wander", 0.0)
    assert parse_policy("astray") == ("astray", 0.0)
    assert parse_policy("hasty") == ("hasty", 0.0) and parse_policy("hasty:0.4") == ("hasty", 0.4)
    assert parse_policy("rl:runs/RL") == ("rl", 0.0)
    for bad in ("noisy", "noisy:-1", "noisy:x", "expertly", "random:2", "halt:3", "wander:5", "astray:1", "hasty:0", "hasty:x", "rl", "rl:", ""):
        with pytest.raises(ConfigError):
            parse_policy(bad)


@given(base=st.integers(0, 2**40), number=st.integers(0, 2**40), n=st.integers(0, 50), offset=st.integers(0, 2**20))
def test_collection_and_evaluation_seeds_never_meet(base, number, n, offset):
    assert 0 <= specs.collection_seed(base, number) < specs.EVAL_SEED_START
    assert all(specs.EVAL_SEED_START <= s < 2**32 for s in specs.eval_seeds(n, offset))


def test_astray_collection_pushes_and_fails_and_refuses_reach(tmp_path, capsys):
    out = str(tmp_path / "a.zarr")
    collect(CollectSpec(out=out, env_ids=("embodied/PointPushDir-v0",), episodes=3, policy="astray", seed=5), progress=False)
    with EpisodeStore.open(out) as s:
        for i in range(3):
            m, ep = s.meta(i), s.episode(i)
            assert m["policy"] == "astray" and not ep["success"].any()
            acted, expert = ep["action"][: m["steps"]], ep["expert_action"][: m["steps"]]
            assert not np.allclose(acted, expert)  # it acts for another direction; the labels stay the true expert's
            again = regenerate(m)
            assert np.array_equal(ep["action"][: len(again["action"])], again["action"])
    assert main(["collect", "--env", "embodied/PointReach-v0", "--episodes", "2", "--out", str(tmp_path / "r.zarr"), "--policy", "astray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "push_dir or push_zone" in err, err


def test_cli_collect_and_its_errors(tmp_path, capsys):
    out = str(tmp_path / "d.zarr")
    assert main(["collect", "--env", "embodied/PointReach-v0", "--episodes", "2", "--out", out, "--policy", "random"]) == 0
    assert "wrote 2 episodes" in capsys.readouterr().out
    for args, msg in [
        (["--env", "embodied/NoSuch-v0"], "NoSuch"),
        (["--env", "embodied/PointReach-v0", "--policy", "noisy:abc"], "noisy"),
        (["--env", "embodied/PointReach-v0", "--pixels", "65"], "--pixels"),
        ([], "--env"),
        (["--env", "embodied/PointReach-v0"], "--append"),
    ]:
        assert main(["collect", "--episodes", "1", "--out", out, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
    with EpisodeStore.open(out) as s:  # nothing written is lost by the refused runs
        assert len(s) == 2


def test_demo_dataset_step_records_verifies_and_reuses(tmp_path, capsys):
    from embodied.cli import _demo_dataset

    path = tmp_path / "episodes.zarr"
    assert _demo_dataset(path, force=False, episodes=4, noisy=2) == str(path)
    first = capsys.readouterr().out
    assert "recording 4 expert and 2 noisy-expert" in first and "6 episodes" in first and "verified" in first
    _demo_dataset(path, force=False, episodes=4, noisy=2)
    assert "reusing" in capsys.readouterr().out
    with EpisodeStore.open(str(path)) as s:
        assert len(s) == 6 and "pixels" not in s.features
        assert [s.record(i)["meta"]["policy"] for i in range(6)] == ["expert"] * 4 + ["noisy:0.4"] * 2


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_interrupted_collection_keeps_its_episodes_and_resumes_with_append(tmp_path, sig):
    """Ctrl-C, or kill -9 of the whole process group mid-run: committed episodes stay, --append continues."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = str(tmp_path / "d.zarr")
    cmd = [sys.executable, "-m", "embodied", "collect", "--env", "embodied/PointPushZone-v0", "--episodes", "500",
           "--policy", "noisy:0.5", "--workers", "2", "--out", out]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if os.path.isdir(os.path.join(out, "episodes")) and len(os.listdir(os.path.join(out, "episodes"))) >= 4:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the collection wrote nothing within 60 s")
        if sig == "SIGINT":
            os.killpg(p.pid, signal.SIGINT)
            _, err = p.communicate(timeout=60)
            assert p.returncode == 130 and "interrupted" in err.decode()
            assert "Traceback" not in err.decode()
        else:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    with EpisodeStore.open(out) as s:
        before = len(s)
        assert 4 <= before < 500 and s.verify() == []
    r = collect(CollectSpec(out=out, env_ids=("embodied/PointPushZone-v0",), episodes=2, policy="noisy:0.5", append=True), progress=False)
    assert r["first_index"] == before and r["total_episodes"] == before + 2
    with EpisodeStore.open(out) as s:
        assert [m["collect_index"] for m in s.metas()] == list(range(before + 2)) and s.verify() == []


def test_an_experts_labels_are_its_actions_and_old_stores_append_without_labels(tmp_path):
    from embodied.datasets.store import EpisodeStore, default_features

    out = str(tmp_path / "e.zarr")
    collect(CollectSpec(out=out, env_ids=ENVS[:1], episodes=2), progress=False)
    with EpisodeStore.open(out) as s:
        ep = s.episode(0)
        assert np.array_equal(ep["expert_action"][ep["action_mask"]], ep["action"][ep["action_mask"]])
    old = str(tmp_path / "old.zarr")  # a store written before the labels existed
    EpisodeStore.create(old, default_features(), control_hz=20.0).close()
    collect(CollectSpec(out=old, env_ids=ENVS[:1], episodes=2, append=True), progress=False)
    with EpisodeStore.open(old) as s:
        assert len(s) == 2 and "expert_action" not in s.features


def test_each_cost_term_is_recorded_and_sums_to_the_cost(tmp_path):
    from embodied.datasets.store import EpisodeStore, default_features

    out = str(tmp_path / "h.zarr")
    collect(CollectSpec(out=out, env_ids=("embodied/PointReachHazard-v0",), episodes=2), progress=False)
    with EpisodeStore.open(out) as s:
        for i in range(2):
            ep = s.episode(i)
            m = ep["action_mask"]
            terms = ep[specs.COST_BY_TERM][m]
            assert terms.shape[1] == len(specs.COST_TERMS) and terms.sum() > 0  # the expert speeds through hazards
            np.testing.assert_allclose(terms.sum(1), ep["cost"][m])
    old = str(tmp_path / "labels_only.zarr")  # written with the expert's labels, before the per-term costs
    features = default_features(labels=True)
    features.pop(specs.COST_BY_TERM)
    EpisodeStore.create(old, features, control_hz=20.0).close()
    collect(CollectSpec(out=old, env_ids=("embodied/PointReachHazard-v0",), episodes=2, append=True), progress=False)
    with EpisodeStore.open(old) as s:
        assert len(s) == 2 and specs.COST_BY_TERM not in s.features and specs.EXPERT_ACTION in s.features
