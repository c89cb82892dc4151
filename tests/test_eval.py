"""`embodied eval`: lockstep rollouts equal single-env ones, fixed evaluation seeds, rows and JSON, videos, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embodied import specs
from embodied.cli import main
from embodied.config import preset
from embodied.envs import make
from embodied.evaluate import evaluate_policy_on, evaluation_summary, run_episodes, summary_lines, wilson_interval
from embodied.model import TrajectoryModel
from embodied.policies import FoundationPolicy
from conftest import fake_encode as _encode


def test_lockstep_rollouts_equal_one_env_at_a_time():
    torch.manual_seed(0)
    policy = FoundationPolicy(TrajectoryModel(preset("tiny")), _encode)
    seeds = specs.eval_seeds(5)
    envs = [make("embodied/PointReach-v0", max_episode_steps=12) for _ in range(3)]
    together = run_episodes(envs, policy, seeds)
    alone = [run_episodes(envs[:1], policy, [s])[0] for s in seeds]
    for env in envs:
        env.close()
    assert together == alone
    assert all(r["length"] <= 12 for r in together) and len({r["instruction"] for r in together}) > 1


def test_rows_have_the_keys_and_seeds_never_overlap_training(tmp_path):
    policy = FoundationPolicy(TrajectoryModel(preset("tiny")), _encode)
    rows = evaluate_policy_on(["embodied/PointReach-v0"], lambda: policy, episodes=4, instructions="paraphrase", n_envs=2)
    (row,) = rows
    for k in ("env_id", "family", "instructions", "episodes", "success", "success_ci", "expert_success", "mean_cost"):
        assert k in row
    assert row["family"] == "reach" and row["instructions"] == "paraphrase" and row["episodes"] == 4
    assert row["expert_success"] == 1.0 and row["success_ci"][0] <= row["success"] <= row["success_ci"][1]
    assert min(row["seeds"]) >= specs.EVAL_SEED_START  # collection seeds are all below it


def test_cli_eval_writes_json_and_videos(tiny_run, tmp_path, capsys):
    run = str(tiny_run)
    assert main(["eval", "--ckpt", run, "--env", "embodied/PointReach-v0", "--episodes", "3", "--videos", "1", "--json",
                 "--instructions", "seen", "paraphrase", "--out", str(tmp_path / "eval")]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["rows"]
    assert [r["instructions"] for r in rows] == ["seen", "paraphrase"] and doc["instructions"] == ["seen", "paraphrase"]
    assert all(r["episodes"] == 3 and len(r["videos"]) == 1 and r["split"] == "train" for r in rows)
    assert [(f["family"], f["instructions"]) for f in doc["families"]] == [("reach", "seen"), ("reach", "paraphrase")]
    assert [t["name"] for t in doc["targets"]] == ["model_vs_expert", "paraphrase_vs_seen"]
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved == doc
    assert len(list((tmp_path / "eval" / "videos" / "seen").glob("*.mp4"))) == 1
    assert len(list((tmp_path / "eval" / "videos" / "paraphrase").glob("*.mp4"))) == 1
    paraphrased = rows[1]["videos"][0]["instruction"]
    assert paraphrased and paraphrased != rows[0]["videos"][0]["instruction"]  # the same seed, said another way
    for args, msg in [([], "--ckpt"), (["--ckpt", run, "--env", "embodied/Nope-v0"], "Nope")]:
        assert main(["eval", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err


def _row(env_id, family, instructions, wins, expert_wins, n=10, split="train"):
    return {"env_id": env_id, "family": family, "instructions": instructions, "split": split, "episodes": n, "successes": wins,
            "success": wins / n, "expert_episodes": n, "expert_successes": expert_wins, "expert_success": expert_wins / n}


def test_family_aggregates_pool_envs_and_state_the_target_ratios():
    rows = [
        _row("A/Reach", "reach", "seen", 8, 7), _row("B/Reach", "reach", "seen", 6, 8),
        _row("A/Push", "push_zone", "seen", 3, 3), _row("B/Push", "push_zone", "seen", 3, 3),
        _row("A/Reach", "reach", "paraphrase", 7, 10), _row("B/Reach", "reach", "paraphrase", 7, 10),
        _row("A/Push", "push_zone", "paraphrase", 2, 5), _row("B/Push", "push_zone", "paraphrase", 4, 5),
        _row("A/Reach", "reach", "composition", 2, 10),  # only one env: compared with seen on that env alone
        _row("H/Reach", "reach", "seen", 1, 10, split="heldout"),
    ]
    s = evaluation_summary(rows)
    fam = {(f["split"], f["instructions"], f["family"]): f for f in s["families"]}
    reach = fam["train", "seen", "reach"]
    assert (reach["envs"], reach["episodes"], reach["successes"], reach["expert_successes"]) == (2, 20, 14, 15)
    assert reach["success"] == pytest.approx(0.7) and reach["model_vs_expert"] == pytest.approx(14 / 15)
    assert reach["success_ci"] == pytest.approx(list(wilson_interval(14, 20)))
    assert fam["train", "seen", "push_zone"]["model_vs_expert"] == pytest.approx(1.0)
    assert fam["heldout", "seen", "reach"]["episodes"] == 10  # splits are never pooled
    overall = {(o["split"], o["instructions"]): o for o in s["overall"]}
    assert overall["train", "seen"]["model_vs_expert"] == pytest.approx((14 / 15 + 1.0) / 2)
    assert overall["train", "seen"]["mean_success"] == pytest.approx((0.7 + 0.3) / 2)
    t = {x["name"]: x for x in s["targets"]}
    assert t["model_vs_expert"]["value"] == pytest.approx((14 / 15 + 1.0) / 2) and t["model_vs_expert"]["met"] is True
    assert t["paraphrase_vs_seen"]["value"] == pytest.approx(((0.7 + 0.3) / 2) / ((0.7 + 0.3) / 2))
    assert t["paraphrase_vs_seen"]["met"] is True
    assert t["composition_vs_seen"]["value"] == pytest.approx(0.2 / 0.8) and t["composition_vs_seen"]["met"] is False
    assert t["composition_vs_seen"]["families"] == ["reach"]
    lines = summary_lines(s)
    assert sum(line.startswith("family ") for line in lines) == len(s["families"]) and any("MISSED" in line for line in lines)


def test_undefined_ratios_are_none_not_a_division_by_zero():
    s = evaluation_summary([_row("A/Reach", "reach", "seen", 0, 0), _row("A/Reach", "reach", "paraphrase", 0, 0)])
    assert s["families"][0]["model_vs_expert"] is None
    assert [(t["name"], t["value"], t["met"]) for t in s["targets"]] == [("model_vs_expert", None, None), ("paraphrase_vs_seen", None, None)]
    assert evaluation_summary([_row("H/Reach", "reach", "seen", 3, 5, split="heldout")])["targets"] == []  # targets are on train envs
