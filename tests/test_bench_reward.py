"""`embodied bench reward`: recorded episodes (--data, --max-episodes) and the step-to-step reward error."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from embodied import specs
from embodied.bench_reward import (dense_steps, evenly_spaced, format_result, missed_targets, reward_metrics, score_episodes,
                                    step_error_metrics)
from embodied.cli import main
from embodied.collect import CollectSpec, collect


@pytest.fixture(scope="module")
def random_store(tmp_path_factory):
    """Two random-policy PointReach episodes (they fail: the failures beside tiny_run's solved expert episodes)."""
    out = str(tmp_path_factory.mktemp("random") / "random.zarr")
    collect(CollectSpec(out=out, env_ids=("embodied/PointReach-v0",), episodes=2, policy="random", seed=1), progress=False)
    return out


def _ep(true, learned, success=False, step_success=None, noise=0.0):
    T = len(true)
    e = {"env_id": "e", "instructions": "seen", "noise": noise, "seed": 0, "instruction": "i", "invalid": False, "success": success,
         "reward": np.asarray(true, dtype=np.float64), "learned_reward": np.asarray(learned, dtype=np.float64),
         "learned_success": np.linspace(0, 1, T), "action": np.zeros((T, 2))}
    if step_success is not None:
        e["step_success"] = np.asarray(step_success, dtype=bool)
    return e


def test_step_error_of_an_offset_is_its_mae_and_no_step_to_step_error():
    rng = np.random.default_rng(0)
    eps = [_ep(t, t + 0.7) for t in (rng.normal(size=40), rng.normal(size=25))]
    m = step_error_metrics(eps)
    assert m["dense_steps"] == 65
    assert m["reward_mae_step"] == pytest.approx(0.7)
    assert m["reward_error_step_std"] == pytest.approx(0.0, abs=1e-12)  # a constant error is no slope to climb
    true_diffs = np.concatenate([np.diff(e["reward"]) for e in eps])  # within episodes, never across their border
    assert m["true_reward_step_std"] == pytest.approx(true_diffs.std())


def test_alternating_error_of_d_changes_by_about_2d_per_step():
    d, T = 0.3, 101
    true = np.sin(np.arange(T) / 7.0)
    flip = d * (-1.0) ** np.arange(T)
    m = step_error_metrics([_ep(true, true + 0.5 + flip)])
    assert m["reward_mae_step"] == pytest.approx(0.5, abs=d)  # |0.5 +/- 0.3| averages 0.5
    assert m["reward_error_step_std"] == pytest.approx(2 * d, rel=0.01)
    # reward_metrics reports the same keys, beside its others
    r = reward_metrics([_ep(true, true + 0.5 + flip, success=True), _ep(true, true - 1.0)])
    for k in ("reward_mae_step", "reward_error_step_std", "true_reward_step_std", "dense_steps", "success_auc_final", "by_noise"):
        assert k in r
    assert r["dense_steps"] == 2 * T - 1  # the solved episode's last step is its success step


def test_dense_steps_follow_the_per_step_success_or_else_end_before_a_solved_episodes_last_step():
    # a success step pays a bonus the learned reward misses: with per-step success it is left out, error and all
    true, learned = np.array([0.0, 1.0, 2.0, 13.0]), np.array([0.5, 1.5, 2.5, 3.5])
    with_flags = _ep(true, learned, success=True, step_success=[0, 0, 0, 1])
    assert dense_steps(with_flags).tolist() == [True, True, True, False]
    assert dense_steps(_ep(true, learned, success=True)).tolist() == [True, True, True, False]  # the same set without flags
    assert dense_steps(_ep(true, learned, success=False)).tolist() == [True] * 4
    m = step_error_metrics([with_flags])
    assert m["dense_steps"] == 3 and m["reward_mae_step"] == pytest.approx(0.5) and m["reward_error_step_std"] == 0.0
    # success in the middle (an env that does not end on success): only pairs of dense steps count
    mid = _ep(np.zeros(5), np.array([0.0, 0.0, 9.0, 0.0, 0.0]), step_success=[0, 0, 1, 0, 0])
    assert step_error_metrics([mid])["reward_error_step_std"] == 0.0
    assert step_error_metrics([_ep(np.zeros(1), np.zeros(1), success=True)])["reward_mae_step"] is None  # nothing dense


def test_recorded_episodes_have_no_noise_group_and_their_target_is_on_all():
    eps = [_ep(np.zeros(5), np.zeros(5), noise=None), _ep(np.zeros(5), np.zeros(5), success=True, noise=None)]
    m = reward_metrics(eps)
    assert m["by_noise"] == {} and m["episodes"] == 2
    assert missed_targets({"all": {**m, "success_auc_final": 0.9}}) == ["all episodes: final-step success AUC 0.9 < 0.95"]
    assert missed_targets({"all": {**m, "success_auc_final": 0.99}}) == []


def test_evenly_spaced_subset():
    assert evenly_spaced(10, None).tolist() == list(range(10))
    assert evenly_spaced(3, 5).tolist() == [0, 1, 2]
    assert evenly_spaced(12, 4).tolist() == [0, 3, 6, 9]
    assert len(set(evenly_spaced(1000, 999).tolist())) == 999


def test_bench_reward_data_scores_recorded_stores(tiny_run, random_store, tmp_path, capsys):
    expert_store = str(tiny_run.parent / "d.zarr")  # 10 solved expert PointReach episodes
    out = tmp_path / "r.json"
    # 12 stored episodes, 6 evenly spaced: 0, 2, 4, 6, 8 of the expert store and the first random one
    assert main(["bench", "reward", "--ckpt", str(tiny_run), "--data", expert_store, random_store, "--max-episodes", "6",
                 "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["stored_episodes"] == 12 and r["all"]["episodes"] == 6 and r["all"]["true_successes"] == 5
    assert r["env_ids"] == ["embodied/PointReach-v0"] and set(r["per_env"]) == {"embodied/PointReach-v0"}
    assert "seen" not in r and "wrong_instruction" not in r and r["all"]["by_noise"] == {}
    a = r["all"]
    for k in ("success_auc_max", "success_auc_final", "reward_spearman_step", "return_spearman", "reward_mae_step",
              "reward_error_step_std", "true_reward_step_std"):
        assert a[k] is not None and math.isfinite(a[k]), k
    assert 0 < a["dense_steps"] <= r["scored_steps"]
    assert a["dense_steps"] == r["scored_steps"] - a["true_successes"]  # the suite's episodes end on their solving step
    assert isinstance(r["missed_targets"], list)
    assert "recorded episodes" in text and "step-to-step" in text and "all" in text


def test_recorded_episodes_are_cut_to_their_steps(tiny_run):
    from embodied.bench_reward import recorded_episodes
    from embodied.datasets.store import EpisodeStore

    store = str(tiny_run.parent / "d.zarr")
    eps, counts = recorded_episodes([store], max_episodes=3, state_dim=specs.STATE_DIM, action_dim=specs.ACTION_DIM)
    assert counts == {"stored": 10, "selected": 3, "skipped": 0} and [e["index"] for e in eps] == [0, 3, 6]
    with EpisodeStore.open(store) as s:
        for e in eps:
            meta = s.meta(e["index"])
            T = meta["steps"]
            assert e["state"].shape == (T + 1, specs.STATE_DIM) and e["action"].shape == (T, specs.ACTION_DIM)
            assert e["reward"].shape == e["cost"].shape == e["step_success"].shape == (T,)
            assert np.isfinite(e["action"]).all() and np.isfinite(e["reward"]).all()
            assert e["success"] == meta["success"] and e["instruction"] == meta["instruction"] and e["noise"] is None
            assert e["env_id"] == meta["env_id"] and e["seed"] == meta["seed"] and e["instructions"] == "recorded"


def test_format_result_of_rollouts_has_the_step_error_line():
    from embodied.bench_reward import bench_reward
    from embodied.config import preset
    from embodied.model import TrajectoryModel
    from embodied.policies import RewardModel
    from conftest import fake_encode

    torch.manual_seed(0)
    rm = RewardModel(TrajectoryModel(preset("tiny", context=8)), fake_encode, device="cpu")
    r = bench_reward(rm, ["embodied/PointReach-v0"], episodes=1, noises=(0.0,), device="cpu")
    assert r["all"]["episodes"] == 2 and r["all"]["reward_mae_step"] is not None and "seen" in r
    assert r["all"]["dense_steps"] == r["scored_steps"] - r["all"]["true_successes"]
    assert "step-to-step" in format_result(r)


@pytest.mark.parametrize("case", ["missing", "corrupt", "sizes", "env", "max"])
def test_bench_reward_data_bad_input_is_one_line(case, tiny_run, tmp_path, capsys):
    from embodied.datasets.store import EpisodeStore, Feature

    store = tmp_path / "s.zarr"
    extra: list[str] = []
    ckpt = str(tmp_path)  # exists; the store fails before any model loads
    if case == "missing":
        needle = "no episode store at"
    elif case == "corrupt":
        store.mkdir()
        (store / "zarr.json").write_text("{not json")
        needle = str(store)
    elif case == "sizes":  # a store of other state and action sizes than the model reads
        feats = {specs.STATE: Feature((5,), "float32", observation=True), specs.ACTION: Feature((3,), "float32"),
                 specs.REWARD: Feature((), "float32")}
        with EpisodeStore.create(str(store), feats) as s:
            s.add_episode({specs.STATE: np.zeros((4, 5)), specs.ACTION: np.zeros((3, 3)), specs.REWARD: np.zeros(3)},
                          {"instruction": "touch the red cube", "env_id": "x"})
        ckpt, needle = str(tiny_run), "its state has size 5, the reward model reads"
    elif case == "env":
        extra, needle = ["--env", "embodied/PointReach-v0"], "leave --env out"
    else:
        extra, needle = ["--max-episodes", "0"], "--max-episodes must be >= 1"
    assert main(["bench", "reward", "--ckpt", ckpt, "--data", str(store), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_a_success_bonus_models_step_error_is_on_its_dense_part():
    """A model whose reward head learned without the success bonus scores reward = dense + bonus x p; the step error
    compares the dense part (what a terminate-on-success RL run pays before a success), not the bonus it expects."""
    from dataclasses import dataclass

    from embodied.policies.reward import Score

    @dataclass
    class Cfg:
        success_bonus: float

    class Fake:
        def __init__(self, bonus: float) -> None:
            self.model = type("M", (), {"cfg": Cfg(bonus)})()

        def score_batch(self, trajs):
            out = []
            for obs, a, _ in trajs:
                T = len(a)
                p = np.linspace(0.0, 0.4, T).astype(np.float32)  # a success probability rising along the episode
                out.append(Score(reward=(-0.5 + 10.0 * p).astype(np.float32), success=p, cost=np.zeros(T, np.float32)))
            return out

    T = 30
    ep = {"instruction": "x", "state": np.zeros((T + 1, 3)), "action": np.zeros((T, 2)), "reward": np.full(T, -0.5),
          "cost": np.zeros(T), "success": False, "invalid": False, "noise": None}
    for bonus, mae in ((10.0, 0.0), (0.0, 2.0)):
        e = dict(ep)
        score_episodes(Fake(bonus), [e])
        m = step_error_metrics([e])
        assert m["reward_mae_step"] == pytest.approx(mae, abs=1e-5)  # with the bonus known, the dense part is exact
