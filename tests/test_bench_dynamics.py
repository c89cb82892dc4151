"""`embodied bench dynamics`: open-loop errors against the baselines on episodes the run never saw, latency, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embodied import specs
from embodied.cli import main


@pytest.fixture(scope="module")
def unseen_store(tmp_path_factory):
    """Four random-action PointReach episodes (long ones: random actions rarely touch the target)."""
    from embodied.collect import CollectSpec, collect

    url = str(tmp_path_factory.mktemp("unseen") / "u.zarr")
    collect(CollectSpec(out=url, env_ids=("embodied/PointReach-v0",), episodes=4, policy="random", seed=7), progress=False)
    return url


def test_bench_dynamics_json_and_the_baselines(tiny_run, unseen_store, capsys):
    from embodied.datasets import EpisodeStore

    args = ["bench", "dynamics", "--ckpt", str(tiny_run), "--data", unseen_store, "--horizons", "1", "3", "--history", "2",
            "--stride", "3", "--candidates", "4", "--steps", "2", "--threads", "1", "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["episodes"] == 4 and "never trained on" in r["which"]
    with EpisodeStore.open(unseen_store) as s:
        eps = [s.episode(i)["state"] for i in range(len(s))]
    # recompute the baselines here: every start frame t0 = 1, 4, 7, ... with a true state h steps later
    dims = list(specs.DYNAMIC_DIMS)
    for h in (1, 3):
        hold, cv = [], []
        for st in eps:
            for t0 in range(1, len(st) - 1, 3):
                if t0 + h <= len(st) - 1:
                    hold.append(np.abs(st[t0 + h] - st[t0])[dims].mean())
                    cv.append(np.abs(st[t0 + h] - st[t0] - h * (st[t0] - st[t0 - 1]))[dims].mean())
        assert r["windows"][str(h)] == len(hold)
        assert r["hold"][str(h)] == pytest.approx(np.mean(hold), rel=1e-4)
        assert r["constant_velocity"][str(h)] == pytest.approx(np.mean(cv), rel=1e-4)
        assert np.isfinite(r["model"][str(h)]) and r["model"][str(h)] > 0
        assert r["ratio_cv_over_model"][str(h)] == pytest.approx(r["constant_velocity"][str(h)] / r["model"][str(h)])
    assert set(r["model_by_group"]) == set(specs.dynamic_state_dims())
    assert r["imagine"]["candidates"] == 4 and r["imagine"]["p50_ms"] > 0
    assert isinstance(r["missed_targets"], list)


@pytest.mark.parametrize("extra, needle", [
    ([], "--ckpt"),
    (["--ckpt", "{run}"], "held-out part"),
    (["--ckpt", "{tmp}/nothing"], "pass a run folder"),
    (["--ckpt", "{run}", "--data", "{store}", "--horizons", "0"], "--horizons"),
])
def test_bench_dynamics_errors_are_one_line(tiny_run, unseen_store, tmp_path, capsys, extra, needle):
    args = [a.format(run=tiny_run, tmp=tmp_path, store=unseen_store) for a in extra]
    assert main(["bench", "dynamics", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
