"""`embodied eval`: lockstep rollouts equal single-env ones, fixed evaluation seeds, rows and JSON, videos, errors."""

from __future__ import annotations

import json

import numpy as np
import torch

from embodied import specs
from embodied.cli import main
from embodied.config import preset
from embodied.envs import make
from embodied.evaluate import evaluate_policy_on, run_episodes
from embodied.model import TrajectoryModel
from embodied.policies import FoundationPolicy


def _encode(texts):
    return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=384) for t in texts]).astype(np.float32)


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
                 "--out", str(tmp_path / "eval")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["episodes"] == 3 and len(rows[0]["videos"]) == 1
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["rows"] == rows
    assert len(list((tmp_path / "eval" / "videos").glob("*.mp4"))) == 1
    for args, msg in [([], "--ckpt"), (["--ckpt", run, "--env", "embodied/Nope-v0"], "Nope")]:
        assert main(["eval", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err
