"""Training: it learns, resumes bit for bit, survives NaN steps, and never loads a pickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from embodied.cli import main
from embodied.collect import CollectSpec, collect
from embodied.config import TrainConfig, TrainRunConfig
from embodied.errors import EmbodiedError
from embodied.training_data import train_from_stores


@pytest.fixture(scope="module")
def reach_store(tmp_path_factory) -> str:
    """200 noisy-expert episodes of one task family (state only)."""
    out = str(tmp_path_factory.mktemp("data") / "reach.zarr")
    collect(CollectSpec(out=out, env_ids=("embodied/PointReach-v0",), episodes=200, policy="noisy:0.2", seed=1), progress=False)
    return out


@pytest.fixture(scope="module")
def expert_reach_store(tmp_path_factory) -> str:
    """1,200 expert episodes of one task family: a policy that reads the scene (not its own last action) needs
    about this many scenes before it stops memorising them (at 400 it does not learn reach at all)."""
    out = str(tmp_path_factory.mktemp("expert") / "reach.zarr")
    collect(CollectSpec(out=out, env_ids=("embodied/PointReach-v0",), episodes=1200, policy="expert", seed=2, workers=2), progress=False)
    return out


def _run(store: str, out: Path, **kw) -> TrainRunConfig:
    return TrainRunConfig(data=(store,), out=str(out), preset="tiny", workers=0, **{"imitate": "all", **kw})  # noisy:0.2 demos


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=40, batch_size=16, window=8, warmup=5, log_every=10, eval_every=0, eval_batches=2, save_every=20, seed=3)
    return TrainConfig(**{**base, **kw})


def _weights(run: Path) -> dict[str, torch.Tensor]:
    latest = sorted((run / "checkpoints").glob("step-*"))[-1]
    return load_file(str(latest / "model.safetensors"))


def test_tiny_model_learns_the_actions(expert_reach_store, tmp_path):
    """Held-out action MSE well below the variance of the actions: the test fails if nothing is learned."""
    from embodied.datasets import EpisodeStore

    r = train_from_stores(_run(expert_reach_store, tmp_path / "r", holdout=0.2),
                          _cfg(steps=600, batch_size=32, lr=2e-3, warmup=20, eval_batches=4), progress=False)
    with EpisodeStore.open(expert_reach_store) as s:
        acts = np.concatenate([s.episode(i)["action"][:-1] for i in range(len(s))])
    variance = float(acts.var(axis=0).mean())
    assert r["metrics"]["action_mse"] < 0.3 * variance, (r["metrics"], variance)
    assert r["metrics"]["state_err_1"] is not None and r["metrics"]["state_err_1"] < r["metrics"]["state_err_5"]


def test_imitate_clean_learns_actions_only_from_unperturbed_recorders(reach_store, tmp_path):
    from embodied.training_data import imitation_mask

    assert imitation_mask(["expert", "noisy:0.5", "random", "human", ""], "clean").tolist() == [True, False, False, True, True]
    assert imitation_mask(["expert", "noisy:0.5", "random"], "all").all()
    with pytest.raises(EmbodiedError, match="--imitate all"):  # the store holds only noisy:0.2 episodes
        train_from_stores(_run(reach_store, tmp_path / "c", imitate="clean"), _cfg(steps=2), progress=False)


def test_held_out_action_metrics_score_what_training_imitates():
    """The held-out action NLL and MSE (what picks the best checkpoint) read the expert's labels where the store has
    them, as the loss does, not the recorder's own actions: a run on halting or wandering episodes, whose own actions
    the policy never learns, must not see its held-out NLL rise as the policy sharpens and keep an early checkpoint."""
    from embodied.config import preset
    from embodied.model import TrajectoryModel
    from embodied.train import evaluate

    torch.manual_seed(0)
    model = TrajectoryModel(preset("tiny", context=8))
    B, T, cfg = 3, 6, model.cfg
    g = torch.Generator().manual_seed(1)
    label = torch.rand(B, T, cfg.action_dim, generator=g) * 2 - 1
    ones = torch.ones(B, T, dtype=torch.bool)
    batch = {"state": torch.randn(B, T, cfg.state_dim, generator=g), "action": -label, "timestep": torch.arange(T).repeat(B, 1),
             "reward": torch.zeros(B, T), "cost": torch.zeros(B, T), "success": ~ones, "mask": ones, "action_mask": ones,
             "state_mask": ones, "instruction": torch.zeros(B, dtype=torch.long), "expert_action": label, "expert_action_mask": ones,
             "imitate": torch.tensor([True, False, False])}
    goals = torch.randn(1, cfg.goal_dim)
    m = evaluate(model, [batch], goals, torch.device("cpu"), horizons=())
    model.eval()
    with torch.no_grad():
        pred = model.decode_action(model.action_logits(model(batch, goals[[0, 0, 0]])["h_pol"]))
    assert m["action_mse"] == pytest.approx(float((pred - label).pow(2).mean()), rel=1e-5)  # every frame, against the labels
    assert m["action_mse"] != pytest.approx(float((pred - batch["action"]).pow(2)[0].mean()), rel=1e-3)


@pytest.mark.parametrize("contrast", [0.0, 0.5])
def test_resume_after_a_kill_is_bit_identical(reach_store, tmp_path, contrast):
    """Also with --contrast: the swaps of a batch depend on its number, not on how the run got there."""
    cfg = _cfg(contrast=contrast)
    straight = tmp_path / "straight"
    train_from_stores(_run(reach_store, straight), cfg, progress=False)

    class Killed(Exception):
        pass

    def kill_after_first_save(step, loss):
        if step == 21:  # the checkpoint of step 20 is on disk
            raise Killed
        return loss

    broken = tmp_path / "broken"
    from embodied import training_data

    with pytest.raises(Killed):
        _train_with_fault(training_data, _run(reach_store, broken), cfg, kill_after_first_save)
    assert [p.name for p in sorted((broken / "checkpoints").glob("step-*"))] == ["step-00000020"]
    train_from_stores(_run(reach_store, broken, resume=True), cfg, progress=False)
    a, b = _weights(straight), _weights(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train_with_fault(module, run, cfg, fault):
    """train_from_stores with a fault hook injected into the loop."""
    import embodied.train as train_mod

    orig = train_mod.train

    def patched(*args, **kwargs):
        return orig(*args, fault=fault, **kwargs)

    train_mod.train = patched
    try:
        return module.train_from_stores(run, cfg, progress=False)
    finally:
        train_mod.train = orig


def test_nan_steps_are_skipped_then_stop_the_run_keeping_the_last_good_checkpoint(reach_store, tmp_path):
    from embodied import training_data
    from embodied.train import TrainingDiverged

    run = tmp_path / "nan"
    calls = []

    def nan_twice(step, loss):  # the 6th and 7th batches give a NaN loss (a skipped step does not advance `step`)
        calls.append(step)
        return loss * float("nan") if len(calls) in (6, 7) else loss

    r = _train_with_fault(training_data, _run(reach_store, run), _cfg(steps=10, save_every=5), nan_twice)
    assert r["bad_steps"] == 2 and r["step"] == 10 and all(torch.isfinite(v).all() for v in _weights(run).values())
    good = (run / "checkpoints" / "step-00000010" / "model.safetensors").read_bytes()
    always_nan = lambda step, loss: loss * float("nan")  # noqa: E731
    with pytest.raises(TrainingDiverged, match="consecutive non-finite"):
        _train_with_fault(training_data, _run(reach_store, run, resume=True), _cfg(steps=20, save_every=5, max_bad_steps=3), always_nan)
    assert (run / "checkpoints" / "step-00000010" / "model.safetensors").read_bytes() == good
    assert [p.name for p in sorted((run / "checkpoints").glob("step-*"))][-1] == "step-00000010"


class _Sentinel:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def test_a_pickle_is_refused_by_resume_and_info(reach_store, tmp_path, capsys):
    run = tmp_path / "evil"
    train_from_stores(_run(reach_store, run), _cfg(steps=4, save_every=2), progress=False)
    sentinel = tmp_path / "sentinel.txt"
    latest = sorted((run / "checkpoints").glob("step-*"))[-1]
    (latest / "model.safetensors").write_bytes(pickle.dumps(_Sentinel(str(sentinel))))
    assert main(["info", str(run)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pickle" in err
    with pytest.raises(EmbodiedError):
        train_from_stores(_run(reach_store, run, resume=True), _cfg(steps=8), progress=False)
    assert not sentinel.exists()


def test_cli_train_and_info(reach_store, tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert main(["train", "--data", reach_store, "--preset", "tiny", "--out", out, "--steps", "6", "--batch-size", "8",
                 "--window", "4", "--workers", "0", "--save-every", "3", "--eval-every", "3", "--no-compile", "--imitate", "all"]) == 0
    assert "trained" in capsys.readouterr().out
    assert main(["info", out]) == 0
    text = capsys.readouterr().out
    assert "step 6" in text and "preset" not in text.splitlines()[0] and "action_nll" in text
    assert main(["train", "--out", out]) == 2
    assert "--data" in capsys.readouterr().err
    before = sorted(p.name for p in (Path(out) / "checkpoints").iterdir())
    assert main(["train", "--data", reach_store, "--preset", "tiny", "--out", out, "--steps", "2", "--workers", "0", "--imitate", "all"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in (Path(out) / "checkpoints").iterdir()) == before  # nothing written is lost
    with pytest.raises(SystemExit) as e:  # argparse refuses an unknown preset with one line
        main(["train", "--data", reach_store, "--out", str(tmp_path / "x"), "--preset", "giant"])
    assert e.value.code == 2 and "invalid choice: 'giant'" in capsys.readouterr().err


def test_demo_train_step_trains_with_pixels_then_reuses(tmp_path, capsys):
    from embodied.cli import _demo_train

    store = str(tmp_path / "px.zarr")
    collect(CollectSpec(out=store, env_ids=("embodied/PointReach-v0",), episodes=40, pixels=64), progress=False)
    run = tmp_path / "run"
    assert _demo_train(store, run, force=False, steps=4) == str(run)
    out = capsys.readouterr().out
    assert "training the small model for 4 steps" in out and "held-out: action_nll" in out
    _demo_train(store, run, force=False, steps=4)
    assert "reusing" in capsys.readouterr().out
    assert list((run / "tb").iterdir())  # TensorBoard event files
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {x["split"] for x in lines} == {"train", "eval"} and all("step" in x for x in lines)
    assert any("action_nll" in x for x in lines if x["split"] == "eval") and any("loss" in x for x in lines if x["split"] == "train")


def test_contrast_and_relations_refuse_bad_settings(reach_store, tmp_path, capsys):
    from embodied.errors import ConfigError

    with pytest.raises(ConfigError, match="--state proprio"):
        train_from_stores(_run(reach_store, tmp_path / "r", relations=True, state="proprio"), _cfg(), progress=False)
    assert main(["train", "--data", reach_store, "--contrast", "1.5", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--contrast must be in [0, 1)" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


def test_success_bonus_trains_the_reward_head_on_the_dense_rest(reach_store, tmp_path):
    """`embodied train --success-bonus 10`: the model records the bonus, and its reward normaliser is that of the reward
    less the bonus on solved steps, which for the suite's envs is the dense penalties alone (never above 0)."""
    from embodied.datasets import EpisodeStore

    out = tmp_path / "bonus"
    assert main(["train", "--data", reach_store, "--preset", "tiny", "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--window", "4", "--workers", "0", "--no-compile", "--imitate", "all", "--success-bonus", "10"]) == 0
    cfg = json.loads(next((out / "checkpoints").glob("step-*/config.json")).read_text())
    assert cfg["model"]["success_bonus"] == 10.0
    with EpisodeStore.open(reach_store) as s:
        eps = [s.episode(i, keys=["reward", "success"]) for i in range(len(s))]
    reward = np.concatenate([e["reward"] for e in eps]).astype(np.float64)
    dense = reward - 10.0 * np.concatenate([e["success"] for e in eps])
    reward, dense = reward[np.isfinite(reward)], dense[np.isfinite(reward)]  # an episode's last frame has no outcome
    assert reward.max() > 9.0 and dense.max() <= 0.0  # the data has solved steps; without their bonus, penalties only
    mean, std = _weights(out)["reward_stats"].tolist()
    assert mean == pytest.approx(dense.mean(), rel=1e-4) and std == pytest.approx(dense.std(), rel=1e-3)
    assert std < 0.5 * reward.std()  # the spikes no longer set the head's scale


def test_reward_change_trains_a_change_head_in_units_of_the_dense_reward_steps(reach_store, tmp_path):
    """`embodied train --reward-change 0.8 --success-bonus 10`: the model records w, and its change head's unit is the
    root-mean-square of one step's change of the dense reward (less the bonus) over the store's episodes."""
    from embodied.datasets import EpisodeStore

    out = tmp_path / "change"
    assert main(["train", "--data", reach_store, "--preset", "tiny", "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--window", "4", "--workers", "0", "--no-compile", "--imitate", "all", "--success-bonus", "10",
                 "--reward-change", "0.8"]) == 0
    assert json.loads(next((out / "checkpoints").glob("step-*/config.json")).read_text())["model"]["reward_change"] == 0.8
    with EpisodeStore.open(reach_store) as s:
        steps = []
        for i in range(len(s)):
            e = s.episode(i, keys=["reward", "success"])
            d = np.diff(e["reward"].astype(np.float64) - 10.0 * e["success"])
            steps.append(d[np.isfinite(d)])
    rms = float(np.sqrt(np.mean(np.concatenate(steps) ** 2)))
    weights = _weights(out)
    assert weights["change_scale"].item() == pytest.approx(rms, rel=1e-4) and 0 < rms < 1.0
    assert "change_head.weight" in weights
    assert main(["train", "--data", reach_store, "--reward-change", "1.0", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_reward_hindsight_is_recorded_and_its_held_out_outcomes_are_measured(reach_store, tmp_path):
    """`embodied train --reward-hindsight`: the model records it, and the held-out evaluation measures reward and success
    where the model reads them (the next observation's token)."""
    out = tmp_path / "hind"
    assert main(["train", "--data", reach_store, "--preset", "tiny", "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--window", "4", "--workers", "0", "--no-compile", "--imitate", "all", "--holdout", "0.3", "--eval-every", "2",
                 "--reward-hindsight"]) == 0
    assert json.loads(next((out / "checkpoints").glob("step-*/config.json")).read_text())["model"]["reward_hindsight"] is True
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    held = [r for r in rows if "reward_mse" in r]
    assert held and np.isfinite(held[-1]["reward_mse"]) and held[-1]["reward_mse"] > 0


def test_success_weight_weighs_the_success_term_of_the_loss(reach_store, tmp_path):
    """`--success-weight W`: the logged loss is the terms' sum with the success term at W (the others at their weights)."""
    out = tmp_path / "sw"
    assert main(["train", "--data", reach_store, "--preset", "tiny", "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--window", "4", "--workers", "0", "--no-compile", "--imitate", "all", "--log-every", "1", "--success-weight", "4"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r.get("split") == "train")
    assert row["success"] > 0
    w = {"action": 1.0, "state": 1.0, "reward": 0.5, "cost": 0.5, "cost_terms": 0.5, "success": 4.0}
    assert row["loss"] == pytest.approx(sum(w[k] * row[k] for k in w if k in row), rel=1e-4)
    assert json.loads(next((out / "checkpoints").glob("step-*/config.json")).read_text())["train"]["success_weight"] == 4.0
    assert main(["train", "--data", reach_store, "--success-weight", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
