"""Few-shot adaptation: methods, adapters tied to their base, loading adapted runs, the command and the curve."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embodied.adapt import (
    ADAPT_JSON,
    ADAPTER_FILE,
    HEADS,
    METHODS,
    AdaptMethod,
    adapt,
    load_model,
    make_method,
    register,
    resolve_checkpoint,
)
from embodied.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from embodied.cli import main
from embodied.config import AdaptConfig, AdaptRunConfig
from embodied.errors import ConfigError

HELD_OUT = "embodied/PointReachRows-v0"
FAST = AdaptConfig(steps=25, batch_size=8, window=4, warmup=2)


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> str:
    """Three expert episodes of a held-out layout (state only)."""
    from embodied.collect import CollectSpec, collect

    path = str(tmp_path_factory.mktemp("demos") / "k3.zarr")
    collect(CollectSpec(out=path, env_ids=(HELD_OUT,), episodes=3, seed=11), progress=False)
    return path


def _adapt(run, demos: str, out: Path, method: str, cfg: AdaptConfig = FAST) -> dict:
    from embodied.adapt_data import adapt_from_stores

    return adapt_from_stores(AdaptRunConfig(ckpt=str(run), data=(demos,), method=method, out=str(out)), cfg)


@pytest.fixture(scope="module")
def head_run(tiny_run, demos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("head") / "a"
    _adapt(tiny_run, demos, out, "head")
    return out


def _demo_batches(demos: str, n: int, seed: int = 0) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    from embodied.cli_data import ensure_embeddings
    from embodied.config import preset
    from embodied.datasets import SamplerConfig, WindowSampler
    from embodied.language import with_tokens
    from embodied.training_data import MODEL_KEYS

    sampler = WindowSampler(demos, SamplerConfig(window=4, batch_size=8, keys=MODEL_KEYS, seed=seed))
    _, vectors = ensure_embeddings([demos], with_tokens(None, preset("tiny").lang_tokens))  # as the tiny run reads them
    goals = torch.stack([torch.as_tensor(vectors[s]) for s in sampler.instructions]).float()
    return [sampler.batch(k) for k in range(n)], goals


def test_full_adaptation_reduces_the_loss_on_the_demos_and_records_its_spend(tiny_run, demos, tmp_path):
    r = _adapt(tiny_run, demos, tmp_path / "full", "full")
    assert r["loss_after"] < 0.8 * r["loss_before"]
    s = r["spend"]
    assert s["demos"] == 3 and s["frames"] > 3 and s["gradient_steps"] == FAST.steps and s["wall_s"] > 0
    assert s["trainable_params"] == s["total_params"] == load_model(tiny_run)[0].num_params()
    record = json.loads((tmp_path / "full" / ADAPT_JSON).read_text())
    assert record["saves"] == "checkpoint" and record["spend"] == s and record["envs"] == [HELD_OUT]
    model, config = load_model(tmp_path / "full")  # a whole run folder: loads like any run
    assert config["adapt"]["method"] == "full"
    base = load_model(tiny_run)[0]
    assert not torch.equal(model.blocks[0].attn.qkv.weight, base.blocks[0].attn.qkv.weight)


def test_adapt_contrast_swaps_instructions_of_the_demos(tiny_run, demos, tmp_path):
    """--contrast reaches the adaptation's batches: the same seed with and without it trains different weights."""
    from dataclasses import replace

    from embodied.datasets import EpisodeStore
    from embodied.envs.instructions import parse_instruction
    from embodied.training_data import InstructionContrast

    sampler_instructions = sorted({m["instruction"] for m in EpisodeStore.open(demos).metas()})
    assert any(InstructionContrast(sampler_instructions, 0.5, 0).far), [parse_instruction(t) for t in sampler_instructions]
    plain = _adapt(tiny_run, demos, tmp_path / "plain", "full", replace(FAST, seed=4))
    swapped = _adapt(tiny_run, demos, tmp_path / "swapped", "full", replace(FAST, seed=4, contrast=0.5))
    assert json.loads((tmp_path / "swapped" / ADAPT_JSON).read_text())["settings"]["contrast"] == 0.5
    a, b = load_model(tmp_path / "plain")[0], load_model(tmp_path / "swapped")[0]
    assert not torch.equal(a.outcome_head.weight, b.outcome_head.weight)
    assert plain["spend"]["gradient_steps"] == swapped["spend"]["gradient_steps"]


def test_adapt_shows_its_steps_and_loss_as_it_goes(tiny_run, demos, tmp_path, capsys):
    from embodied.adapt_data import adapt_from_stores

    heard: list[tuple[int, float]] = []
    model, _ = load_model(tiny_run)
    batches, goals = _demo_batches(demos, 2)
    result = adapt(model, make_method("full"), batches * 3, goals, AdaptConfig(steps=6, warmup=1, window=4),
                   on_step=lambda step, loss: heard.append((step, loss)))
    assert [s for s, _ in heard] == list(range(1, 7)) and [loss for _, loss in heard] == result.losses
    capsys.readouterr()
    adapt_from_stores(AdaptRunConfig(ckpt=str(tiny_run), data=(demos,), method="head", out=str(tmp_path / "a")), FAST)
    err = capsys.readouterr().err
    assert f"{FAST.steps}/{FAST.steps}" in err and "loss=" in err and "adapt (head)" in err
    adapt_from_stores(AdaptRunConfig(ckpt=str(tiny_run), data=(demos,), method="head", out=str(tmp_path / "b")), FAST, progress=False)
    assert "adapt (head)" not in capsys.readouterr().err


def test_head_trains_only_the_heads(tiny_run, demos):
    model, _ = load_model(tiny_run)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches, goals = _demo_batches(demos, 4)
    result = adapt(model, make_method("head"), batches * 5, goals, AdaptConfig(steps=20, warmup=2, window=4), eval_batches=batches[:2])
    assert result.steps == 20 and result.loss_after < result.loss_before
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.split(".")[0] in HEADS for k in changed)  # everything else bit-identical
    assert {"action_head.weight", "state_head.weight", "outcome_head.weight"} <= changed
    assert result.trainable_params == sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in HEADS)
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was found


def test_head_adapter_is_small_round_trips_and_loads_in_the_policy(tiny_run, head_run):
    from embodied.policies import FoundationPolicy

    base_bytes = (resolve_checkpoint(tiny_run) / "model.safetensors").stat().st_size
    adapter = head_run / ADAPTER_FILE
    assert adapter.stat().st_size < base_bytes / 5
    record = json.loads((head_run / ADAPT_JSON).read_text())
    assert record["saves"] == "adapter" and len(record["base"]["hash"]) == 64
    model, config = load_model(head_run)
    base, _ = load_model(tiny_run)
    from embodied.checkpoint import load_tensors

    tensors = load_tensors(adapter)
    assert set(tensors) == {n for n, _ in model.named_parameters() if n.split(".")[0] in HEADS}
    for name, p in model.named_parameters():
        expected = tensors[name] if name in tensors else dict(base.named_parameters())[name]
        assert torch.equal(p, expected), name
    assert config["adapt"]["method"] == "head" and config["encoder"]
    policy = FoundationPolicy.load(head_run, device="cpu")
    obs = {"state": torch.zeros(90).numpy(), "instruction": "touch the red cube"}
    action, _ = policy.predict(obs, deterministic=True)
    assert action.shape == (2,)


def test_adapter_refuses_a_base_with_another_hash(tiny_run, head_run, tmp_path):
    ck = load_checkpoint(resolve_checkpoint(tiny_run))
    tampered = {k: v.clone() for k, v in ck.model.items()}
    tampered["blocks.0.attn.qkv.weight"][0, 0] += 1e-3
    other = save_checkpoint(tmp_path / "other", config=ck.config, model=tampered)
    with pytest.raises(CheckpointError, match="another checkpoint") as err:
        load_model(head_run, base=other)
    assert "\n" not in str(err.value)
    moved = tmp_path / "moved"
    shutil.copytree(head_run, moved)
    record = json.loads((moved / ADAPT_JSON).read_text())
    record["base"] = {**record["base"], "checkpoint": str(tmp_path / "nowhere"), "relative": "../nowhere"}
    (moved / ADAPT_JSON).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="is missing"):
        load_model(moved)
    assert torch.equal(load_model(moved, base=tiny_run)[0].action_head.weight, load_model(head_run)[0].action_head.weight)


def test_adapter_never_unpickles(head_run, tmp_path):
    bad = tmp_path / "pickled"
    shutil.copytree(head_run, bad)
    torch.save({"action_head.weight": torch.zeros(1)}, bad / ADAPTER_FILE)  # a pickle under the safetensors name
    with pytest.raises(CheckpointError, match="never loads pickles"):
        load_model(bad)
    record = json.loads((bad / ADAPT_JSON).read_text())
    record["tensors"] = "adapter.pt"
    (bad / ADAPT_JSON).write_text(json.dumps(record))
    shutil.move(bad / ADAPTER_FILE, bad / "adapter.pt")
    with pytest.raises(CheckpointError, match="never loads pickles"):
        load_model(bad)


def test_eval_runs_on_an_adapted_model_unchanged(head_run, capsys):
    assert main(["eval", "--ckpt", str(head_run), "--env", HELD_OUT, "--episodes", "2", "--envs", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["env_id"] == HELD_OUT and rows[0]["episodes"] == 2
    assert (head_run / "eval" / "eval.json").exists()


def test_a_registered_method_slots_in_without_changing_the_cli(tiny_run, demos, tmp_path, capsys):
    @register("test-final-norm")
    class FinalNorm(AdaptMethod):
        """Trains the final layer norm only (a stand-in for the next methods)."""

        option_names = ("scale",)

        def trainable(self, model):
            return {n: p for n, p in model.named_parameters() if n.startswith("ln_f.")}

    try:
        with pytest.raises(ValueError, match="registered twice"):
            register("test-final-norm")(FinalNorm)
        with pytest.raises(ConfigError, match="does not take option"):
            make_method("test-final-norm", {"rank": 4})
        out = tmp_path / "lnf"
        assert main(["adapt", "--ckpt", str(tiny_run), "--data", demos, "--method", "test-final-norm", "--option", "scale=2",
                     "--out", str(out), "--steps", "3", "--batch-size", "4", "--window", "4", "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["options"] == {"scale": 2} and r["spend"]["trainable_params"] == 2 * 64
        model, _ = load_model(out)
        base, _ = load_model(tiny_run)
        assert not torch.equal(model.ln_f.weight, base.ln_f.weight)
        assert torch.equal(model.action_head.weight, base.action_head.weight)
    finally:
        METHODS.pop("test-final-norm", None)


@pytest.mark.parametrize("args, needle", [
    (["--data", "D.zarr"], "--ckpt"),
    (["--ckpt", "RUN"], "--data"),
    (["--ckpt", "/no/such/run", "--data", "DEMOS"], "does not exist"),
    (["--ckpt", "RUN", "--data", "DEMOS", "--method", "lorax"], "unknown adaptation method 'lorax'; choose one of full, head"),
    (["--ckpt", "RUN", "--data", "DEMOS", "--window", "999"], "exceeds the base model's context"),
    (["--ckpt", "RUN", "--data", "DEMOS", "--out", "HEAD"], "already holds a model"),
    (["--ckpt", "RUN", "--data", "CORRUPT"], "CORRUPT"),
    (["--ckpt", "RUN", "--data", "DEMOS", "--steps", "-1"], "steps must be >= 0"),
])
def test_adapt_command_errors_are_one_line_with_exit_2(tiny_run, demos, head_run, tmp_path, capsys, args, needle):
    corrupt = tmp_path / "CORRUPT.zarr"
    corrupt.mkdir()
    (corrupt / "zarr.json").write_text("{not json")
    subs = {"RUN": str(tiny_run), "DEMOS": demos, "HEAD": str(head_run), "CORRUPT": str(corrupt)}
    argv = ["adapt", *[subs.get(a, a) for a in args]] + ([] if "--out" in args else ["--out", str(tmp_path / "new")])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("embodied: error:")
    assert needle.replace("CORRUPT", "CORRUPT.zarr") in err
    assert not (tmp_path / "new" / ADAPT_JSON).exists()


def test_adapt_command_in_a_fresh_process_prints_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "embodied", "adapt", "--ckpt", str(tmp_path / "none"), "--data", "x.zarr"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_bench_adapt_writes_a_curve_the_report_plots(tiny_run, tmp_path):
    from embodied.bench_adapt import CURVE_FILE, adapt_curve, format_curve, missed_targets
    from embodied.config import BenchAdaptConfig
    from embodied.report import build_report

    cfg = BenchAdaptConfig(ckpt=str(tiny_run), env=HELD_OUT, ks=(1, 2), episodes=2, steps=2, scratch_steps=2, batch_size=4, window=4,
                           out=str(tmp_path / "curve"), envs=2)
    curve = adapt_curve(cfg, log=lambda s: None)
    saved = json.loads((tmp_path / "curve" / CURVE_FILE).read_text())
    assert saved["points"] == curve["points"] and saved["kind"] == "embodied-adapt-curve"
    assert [(p["k"], p["method"]) for p in curve["points"]] == [(k, m) for k in (1, 2) for m in ("full", "head", "scratch")]
    for p in curve["points"]:
        lo, hi = p["success_ci"]
        assert lo <= p["success"] <= hi and p["episodes"] == 2 and p["spend"]["demos"] == p["k"]
        assert p["spend"]["gradient_steps"] == 2
    head = next(p for p in curve["points"] if p["method"] == "head")
    assert head["spend"]["trainable_params"] < next(p for p in curve["points"] if p["method"] == "full")["spend"]["trainable_params"]
    assert "expert" in curve and curve["zero_shot"]["k"] == 0
    assert "K" in format_curve(curve)
    r = build_report([str(tmp_path / "curve")], str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text()
    assert r["curves"] == 1 and "Few-shot adaptation: embodied/PointReachRows-v0" in html and "<svg" in html
    # the target check: at K = 10, best adapted >= 2x scratch and above zero-shot
    fake = {"zero_shot": {"success": 0.2}, "points": [{"k": 10, "method": "full", "success": 0.5},
                                                      {"k": 10, "method": "scratch", "success": 0.3}]}
    assert missed_targets(fake) == ["K=10: best adapted (full) success 0.50 is below 2x scratch 0.30"]
    fake["points"][1]["success"] = 0.25
    assert missed_targets(fake) == []


def test_hide_actions_masks_a_fraction_and_never_unmasks():
    from embodied.adapt import hide_actions

    torch.manual_seed(0)
    mask = torch.rand(64, 16) < 0.9
    batch = {"action_mask": mask, "state": torch.zeros(64, 16, 3)}
    assert hide_actions(batch, 0.0) is batch
    hidden = hide_actions(batch, 0.5)["action_mask"]
    assert not (hidden & ~mask).any()
    assert 0.4 < hidden.sum() / mask.sum() < 0.6
    with pytest.raises(ConfigError, match="action-dropout"):
        AdaptConfig(action_dropout=1.0)
