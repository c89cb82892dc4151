"""Checkpoints: safetensors + JSON round trips, bit-exact resume, pickle refusal, tamper checks,
atomic writes and the run's checkpoint manager."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import embodied.checkpoint as ck
from embodied.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng,
    config_hash,
    load_checkpoint,
    model_hash,
    restore_rng,
    save_checkpoint,
)
from embodied.errors import EmbodiedError

CONFIG = {"d_model": 16, "layers": 2, "name": "tiny", "dropout": 0.1}


# --------------------------------------------------------------------------- helpers


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def make_training(seed: int = 0, fused: bool | None = None) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    model = make_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.05, fused=fused)
    total, warmup = 20, 3

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    return model, opt, sched


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, n: int) -> None:
    """Steps that draw from torch (data, dropout), numpy and python's random."""
    model.train()
    for _ in range(n):
        x = torch.randn(8, 4)
        noise = torch.from_numpy(np.random.standard_normal((8, 3)).astype(np.float32))
        scale = random.random()
        loss = ((model(x) - noise * scale) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def assert_tree_equal(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (path, list(a), list(b))
        for k in a:
            assert_tree_equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_tree_equal(x, y, f"{path}/{i}")
    else:
        assert type(a) is type(b) and a == b, (path, a, b)


def small_checkpoint(folder: Path, **kwargs: Any) -> Path:
    model = make_model()
    return save_checkpoint(folder, config=CONFIG, model=model.state_dict(), **kwargs)


def assert_one_line(err: pytest.ExceptionInfo[BaseException], *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for needle in needles:
        assert needle in msg, msg


# --------------------------------------------------------------------------- round trips


def test_layout_and_model_round_trip(tmp_path: Path) -> None:
    model, opt, sched = make_training()
    train_steps(model, opt, sched, 2)
    folder = save_checkpoint(
        tmp_path / "ck",
        config=CONFIG,
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        rng=capture_rng(),
        extra={"step": 2, "sampler": {"epoch": 0, "order": np.arange(5, dtype=np.int64), "cursor": (3, 4)}},
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.json", "optimizer.safetensors",
        "rng.safetensors", "trainer.json", "trainer.safetensors",
    ]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp folder left
    assert json.loads((folder / "config.json").read_text()) == CONFIG
    from safetensors import safe_open

    with safe_open(str(folder / "optimizer.safetensors"), "pt") as f:
        assert {"state/0/exp_avg", "state/0/exp_avg_sq", "state/0/step"} <= set(f.keys())

    weights_only = load_checkpoint(folder)
    assert weights_only.config == CONFIG and weights_only.optimizer is None and weights_only.extra is None
    assert_tree_equal(dict(model.state_dict()), weights_only.model)

    full = load_checkpoint(folder, training_state=True)
    assert_tree_equal(opt.state_dict(), full.optimizer)
    assert_tree_equal(sched.state_dict(), full.scheduler)
    assert full.step == 2
    assert full.extra is not None
    assert full.extra["sampler"]["cursor"] == (3, 4)
    assert isinstance(full.extra["sampler"]["order"], np.ndarray)
    assert full.extra["sampler"]["order"].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("fused", [None, True, False])
def test_optimizer_state_loads_into_adamw_exactly(tmp_path: Path, fused: bool | None) -> None:
    model, opt, sched = make_training(fused=fused)
    train_steps(model, opt, sched, 3)
    save_checkpoint(tmp_path / "ck", config=CONFIG, model=model.state_dict(), optimizer=opt.state_dict(), extra={})
    loaded = load_checkpoint(tmp_path / "ck", training_state=True)
    model2, opt2, _ = make_training(seed=1, fused=fused)
    opt2.load_state_dict(loaded.optimizer)
    assert_tree_equal(opt.state_dict(), opt2.state_dict())
    group = opt2.param_groups[0]
    assert group["fused"] == fused and group["betas"] == (0.8, 0.95) and isinstance(group["betas"], tuple)
    assert isinstance(opt2.state[next(iter(model2.parameters()))]["step"], torch.Tensor)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    n = 5
    seed_all(123)
    model, opt, sched = make_training()
    train_steps(model, opt, sched, n)
    save_checkpoint(
        tmp_path / "ck",
        config=CONFIG,
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        scheduler=sched.state_dict(),
        rng=capture_rng(),
        extra={"step": n},
    )
    train_steps(model, opt, sched, n)  # the uninterrupted run: 2N steps

    seed_all(999)  # a "new process": different global RNG, different init
    ckpt = load_checkpoint(tmp_path / "ck", training_state=True)
    model2, opt2, sched2 = make_training(seed=7)
    model2.load_state_dict(ckpt.model)
    opt2.load_state_dict(ckpt.optimizer)
    sched2.load_state_dict(ckpt.scheduler)
    assert ckpt.rng is not None
    restore_rng(ckpt.rng)
    train_steps(model2, opt2, sched2, n)

    assert ckpt.step == n
    assert_tree_equal(dict(model.state_dict()), dict(model2.state_dict()))
    assert_tree_equal(opt.state_dict(), opt2.state_dict())
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_rng_restore_reproduces_every_generator(tmp_path: Path) -> None:
    seed_all(5)
    random.random(), np.random.standard_normal(), torch.rand(1)  # advance a little
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    state = capture_rng()
    json.dumps({k: v for k, v in state.items() if k in ("python", "numpy")})  # JSON parts are JSON
    first = (torch.rand(4), np.random.standard_normal(4), [random.random() for _ in range(4)])
    save_checkpoint(tmp_path / "ck", config=CONFIG, model={}, rng=state)
    seed_all(77)
    restore_rng(load_checkpoint(tmp_path / "ck", training_state=True).rng or {})
    second = (torch.rand(4), np.random.standard_normal(4), [random.random() for _ in range(4)])
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]
    with pytest.raises(CheckpointError):
        restore_rng({"python": "nonsense"})


def test_tied_and_overlapping_tensors(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    base = torch.arange(12.0)
    state = {**model.state_dict(), "buf": base, "view": base[2:6], "strided": base[::2]}
    save_checkpoint(tmp_path / "ck", config=CONFIG, model=state)
    loaded = load_checkpoint(tmp_path / "ck").model
    assert loaded["embed.weight"] is loaded["head.weight"]  # stored once, aliased
    assert torch.equal(loaded["view"], base[2:6]) and torch.equal(loaded["strided"], base[::2])
    fresh = Tied()
    fresh.load_state_dict({k: loaded[k] for k in ("embed.weight", "head.weight")})
    assert torch.equal(fresh.embed.weight, model.embed.weight) and fresh.head.weight is fresh.embed.weight


def test_dtypes_and_interop_with_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = {
        "f32": torch.randn(3, 2),
        "bf16": torch.randn(5).to(torch.bfloat16),
        "f16": torch.randn(2, 2).half(),
        "f64": torch.randn(1, dtype=torch.float64),
        "i64": torch.arange(7),
        "u8": torch.arange(3, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "transposed": torch.randn(3, 4).t(),
    }
    folder = save_checkpoint(tmp_path / "ck", config=CONFIG, model=state)
    ours = load_checkpoint(folder).model
    theirs = load_file(str(folder / "model.safetensors"))  # a standard safetensors file
    for name, t in state.items():
        assert ours[name].dtype == t.dtype and torch.equal(ours[name], t), name
        assert torch.equal(theirs[name], t), name
    assert list(ours) == list(state)  # the caller's order survives
    # a file written by safetensors itself (e.g. converted weights) loads too
    save_file({"w": torch.ones(2, 3)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert torch.equal(load_checkpoint(folder).model["w"], torch.ones(2, 3))
    with pytest.raises(CheckpointError, match="device") as err:
        load_checkpoint(folder, map_location="no-such-device")
    assert_one_line(err)


def test_hashes(tmp_path: Path) -> None:
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    a = small_checkpoint(tmp_path / "a")
    b = small_checkpoint(tmp_path / "b")
    assert model_hash(a) == model_hash(b) and len(model_hash(a)) == 64
    save_checkpoint(tmp_path / "c", config=CONFIG, model=make_model(seed=3).state_dict())
    assert model_hash(tmp_path / "c") != model_hash(a)


def test_save_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not plain JSON"):
        save_checkpoint(tmp_path / "x", config={"f": object()}, model={})
    with pytest.raises(CheckpointError, match="not a dict"):
        save_checkpoint(tmp_path / "x", config=[1], model={})  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not an embodied checkpoint") as err:
        small_checkpoint(precious)
    assert_one_line(err)
    assert (precious / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- pickles


class Payload:
    """Unpickling this object creates the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def pickle_bytes(path: Path, how: str, sentinel: Path) -> None:
    if how == "torch":
        torch.save(Payload(sentinel), path)
    else:
        with open(path, "wb") as f:
            pickle.dump(Payload(sentinel), f)


def every_load_path(folder: Path, run_dir: Path | None = None) -> list[Any]:
    calls: list[Any] = [
        lambda: load_checkpoint(folder),
        lambda: load_checkpoint(folder, training_state=True),
        lambda: model_hash(folder),
    ]
    if run_dir is not None:
        calls.append(lambda: load_checkpoint(CheckpointManager(run_dir).latest() or folder, training_state=True))
        calls.append(lambda: load_checkpoint(CheckpointManager(run_dir).latest() or folder))
    return calls


def test_the_payload_is_live(tmp_path: Path) -> None:
    """Control: the payload really runs when unpickled, so the refusals below mean something."""
    for how in ("torch", "pickle"):
        sentinel = tmp_path / f"control-{how}"
        pickle_bytes(tmp_path / f"p-{how}", how, sentinel)
        if how == "torch":
            with pytest.raises(Exception):  # weights_only=True refuses it, but a plain load runs it
                torch.load(tmp_path / f"p-{how}", weights_only=True)
            torch.load(tmp_path / f"p-{how}", weights_only=False).close()
        else:
            with open(tmp_path / f"p-{how}", "rb") as f:
                pickle.load(f).close()
        assert sentinel.exists()


@pytest.mark.parametrize("how", ["torch", "pickle"])
@pytest.mark.parametrize(
    "layout",
    [
        "model.pt-alone",
        "model.pt-with-config",
        "model.pt-beside-valid-checkpoint",
        "as-model.safetensors",
        "as-optimizer.safetensors",
        "as-rng.safetensors",
    ],
)
def test_pickles_are_refused_by_every_load_path(tmp_path: Path, how: str, layout: str) -> None:
    sentinel = tmp_path / "SENTINEL"
    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints" / "step-00000001"
    if layout.startswith("model.pt"):
        folder.mkdir(parents=True)
        if layout == "model.pt-with-config":
            (folder / "config.json").write_text(json.dumps(CONFIG))
        if layout == "model.pt-beside-valid-checkpoint":
            model, opt, sched = make_training()
            save_checkpoint(folder, config=CONFIG, model=model.state_dict(), optimizer=opt.state_dict(), extra={})
        pickle_bytes(folder / "model.pt", how, sentinel)
    else:
        model, opt, sched = make_training()
        train_steps(model, opt, sched, 1)
        save_checkpoint(folder, config=CONFIG, model=model.state_dict(), optimizer=opt.state_dict(), rng=capture_rng(), extra={})
        pickle_bytes(folder / layout.removeprefix("as-"), how, sentinel)
    (run_dir / "checkpoints" / "latest.json").write_text(json.dumps({"step": 1, "path": folder.name}))

    for call in every_load_path(folder, run_dir):
        with pytest.raises(CheckpointError) as err:
            call()
        assert_one_line(err, str(folder), "never loads pickles")
        assert not sentinel.exists()
    assert CheckpointManager(run_dir).latest() == folder
    assert not sentinel.exists()


def test_a_pickle_file_passed_directly_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "SENTINEL"
    pickle_bytes(tmp_path / "model.pt", "torch", sentinel)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "model.pt")
    assert_one_line(err, "never loads pickles")
    assert not sentinel.exists()


# --------------------------------------------------------------------------- damaged folders


def _flip_length(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]


def _big_length(data: bytes) -> bytes:
    return data[:7] + b"\x7f" + data[8:]


def _length_past_end(data: bytes) -> bytes:
    return (len(data) - 4).to_bytes(8, "little") + data[8:]


def _garbage_header(data: bytes) -> bytes:
    n = int.from_bytes(data[:8], "little")
    return data[:8] + (b"{garbage" + b"!" * n)[:n] + data[8 + n :]


def _non_object_header(data: bytes) -> bytes:
    n = int.from_bytes(data[:8], "little")
    return data[:8] + b"[1]".ljust(n) + data[8 + n :]


def _tampered_offsets(data: bytes) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, header[key]["data_offsets"][1] + 4]
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]


def _tampered_dtype(data: bytes) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["dtype"] = "F64"
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]


TAMPERS = {
    "flip-length-byte": _flip_length,
    "huge-length": _big_length,
    "length-past-end": _length_past_end,
    "truncated": lambda d: d[: len(d) - 10],
    "truncated-in-header": lambda d: d[:20],
    "shorter-than-prefix": lambda d: d[:5],
    "empty": lambda d: b"",
    "garbage-json-header": _garbage_header,
    "non-object-header": _non_object_header,
    "overlapping-offsets": _tampered_offsets,
    "dtype-size-mismatch": _tampered_dtype,
    "extra-trailing-bytes": lambda d: d + b"\x00" * 16,
}


@pytest.mark.parametrize("target", ["model.safetensors", "optimizer.safetensors"])
@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_tampered_safetensors_give_a_clear_error(tmp_path: Path, target: str, tamper: str) -> None:
    model, opt, sched = make_training()
    train_steps(model, opt, sched, 1)
    folder = save_checkpoint(tmp_path / "ck", config=CONFIG, model=model.state_dict(), optimizer=opt.state_dict(), extra={})
    path = folder / target
    path.write_bytes(TAMPERS[tamper](path.read_bytes()))
    for call in every_load_path(folder):
        with pytest.raises(CheckpointError) as err:
            call()
        assert_one_line(err, str(path))
        assert isinstance(err.value, EmbodiedError)


def test_missing_and_broken_parts(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_checkpoint(tmp_path / "nowhere")
    assert_one_line(err)

    folder = small_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="weights only"):
        load_checkpoint(folder, training_state=True)
    with pytest.raises(CheckpointError, match="pass the checkpoint folder"):
        load_checkpoint(folder / "model.safetensors")

    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON") as err:
        load_checkpoint(folder)
    assert_one_line(err)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(folder)

    folder = small_checkpoint(tmp_path / "ck2", optimizer=make_training()[1].state_dict(), extra={"step": 0})
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(folder)

    folder = small_checkpoint(tmp_path / "ck3", optimizer=make_training()[1].state_dict(), extra={"step": 0})
    (folder / "optimizer.json").write_text('{"format": "embodied-checkpoint", "version": 1, "state_dict": {"__tensor__": "nope"}}')
    with pytest.raises(CheckpointError, match="does not hold") as err:
        load_checkpoint(folder, training_state=True)
    assert_one_line(err)
    (folder / "optimizer.json").unlink()
    with pytest.raises(CheckpointError, match="optimizer state is incomplete"):
        load_checkpoint(folder, training_state=True)
    (folder / "trainer.json").write_text('{"format": "embodied-checkpoint", "version": 99}')
    (folder / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="upgrade embodied"):
        load_checkpoint(folder, training_state=True)


# --------------------------------------------------------------------------- atomic writes


def test_crash_while_writing_tensors_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = CheckpointManager(tmp_path / "run", keep_last=2)
    model, opt, sched = make_training()
    first = run.save(1, 0.5, config=CONFIG, model=model.state_dict(), optimizer=opt.state_dict())
    before = model_hash(first)
    train_steps(model, opt, sched, 1)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        Path(args[1]).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "_save_file", disk_full)
    for step in (1, 2):  # overwriting the same step, and a new one
        with pytest.raises(CheckpointError, match="No space left") as err:
            run.save(step, 0.1, config=CONFIG, model=model.state_dict(), optimizer=opt.state_dict())
        assert_one_line(err, "intact")
    monkeypatch.undo()

    assert run.latest() == first and run.best() == first and run.checkpoints() == [first]
    assert model_hash(first) == before
    assert load_checkpoint(first, training_state=True).step == 1
    assert sorted(p.name for p in run.dir.iterdir()) == ["best.json", "latest.json", "step-00000001"]


def test_crash_at_the_final_rename_restores_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = small_checkpoint(tmp_path / "ck", extra={"step": 1})
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if ".tmp-" in str(src):
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CheckpointError, match="Input/output error"):
        save_checkpoint(folder, config={"other": 1}, model={}, extra={"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(folder, training_state=True).step == 1
    assert load_checkpoint(folder).config == CONFIG
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_a_hard_crash_leaves_nothing_that_looks_like_a_checkpoint(tmp_path: Path) -> None:
    run = CheckpointManager(tmp_path / "run")
    model = make_model()
    first = run.save(1, None, config=CONFIG, model=model.state_dict())
    # what a SIGKILL leaves: a half-written temp folder and a checkpoint moved aside mid-swap
    (run.dir / ".step-00000002.tmp-0123456789ab").mkdir()
    (run.dir / ".step-00000002.tmp-0123456789ab" / "config.json").write_text("{")
    second = run.save(2, None, config=CONFIG, model=model.state_dict())
    real = real_replace_aside(second)
    assert run.checkpoints() == [first] and run.latest() == first  # pointer names step 2, gone: fall back
    with pytest.raises(CheckpointError, match="interrupted save left the previous copy") as err:
        load_checkpoint(second)
    assert_one_line(err)
    run.save(3, None, config=CONFIG, model=model.state_dict())  # the writer repairs and tidies
    assert [p.name for p in run.checkpoints()] == ["step-00000001", "step-00000002", "step-00000003"]
    assert not real.exists() and not any(p.name.startswith(".") for p in run.dir.iterdir())


def real_replace_aside(folder: Path) -> Path:
    aside = folder.parent / f".{folder.name}.old-abcdef012345"
    os.replace(folder, aside)
    return aside


# --------------------------------------------------------------------------- manager


def test_manager_keeps_the_last_n_and_the_best(tmp_path: Path) -> None:
    run = CheckpointManager(tmp_path / "run", keep_last=2, mode="min")
    assert run.latest() is None and run.best() is None
    model, opt, sched = make_training()
    metrics = {1: 5.0, 2: 1.0, 3: 4.0, 4: float("nan"), 5: 3.0, 6: 6.0}
    for step, metric in metrics.items():
        run.save(step, metric, config=CONFIG, model=model.state_dict(), optimizer=opt.state_dict(), extra={"epoch": 0})
    names = [p.name for p in run.checkpoints()]
    assert names == ["step-00000002", "step-00000005", "step-00000006"]
    assert json.loads((run.dir / "latest.json").read_text()) == {"step": 6, "path": "step-00000006"}
    assert json.loads((run.dir / "best.json").read_text())["metric"] == 1.0

    reopened = CheckpointManager(tmp_path / "run", keep_last=2)
    assert reopened.latest() == run.dir / "step-00000006"
    assert reopened.best() == run.dir / "step-00000002"
    ckpt = load_checkpoint(reopened.latest() or Path(), training_state=True)
    assert ckpt.step == 6 and ckpt.extra == {"epoch": 0, "step": 6, "metric": 6.0}

    reopened.save(7, 0.5, config=CONFIG, model=model.state_dict())  # a new best; the old one may go
    assert [p.name for p in reopened.checkpoints()] == ["step-00000006", "step-00000007"]
    assert reopened.best() == run.dir / "step-00000007"

    flipped = CheckpointManager(tmp_path / "run", keep_last=5, mode="max")  # best.json's mode is stale
    flipped.save(8, 0.7, config=CONFIG, model=model.state_dict())
    assert flipped.best() == run.dir / "step-00000006" and json.loads((run.dir / "best.json").read_text())["mode"] == "max"
    flipped.save(9, 7.0, config=CONFIG, model=model.state_dict())
    assert flipped.best() == run.dir / "step-00000009"

    (run.dir / "best.json").write_text("garbage")  # a broken pointer: rescanned from trainer.json
    (run.dir / "latest.json").unlink()
    assert reopened.best() == run.dir / "step-00000007" and reopened.latest() == run.dir / "step-00000009"


def test_manager_max_mode_no_best_and_overwrite(tmp_path: Path) -> None:
    model = make_model()
    run = CheckpointManager(tmp_path / "run", keep_last=1, mode="max")
    for step, metric in [(10, 0.2), (20, 0.9), (30, 0.4)]:
        run.save(step, metric, config=CONFIG, model=model.state_dict())
    assert [p.name for p in run.checkpoints()] == ["step-00000020", "step-00000030"]
    assert run.best() == run.dir / "step-00000020"
    # resume from step 20 after a crash and overwrite the best checkpoint with a worse one
    run.save(20, 0.1, config=CONFIG, model=model.state_dict())
    assert run.latest() == run.dir / "step-00000020"
    assert run.best() == run.dir / "step-00000030"  # rescanned: 0.4 beats the new 0.1
    assert (run.dir / "step-00000030").is_dir()  # a later step is kept until overwritten

    plain = CheckpointManager(tmp_path / "plain", keep_last=2, keep_best=False)
    for step in range(5):
        plain.save(step, float(-step), config=CONFIG, model=model.state_dict())
    assert [p.name for p in plain.checkpoints()] == ["step-00000003", "step-00000004"]
    assert plain.best() is None and not (plain.dir / "best.json").exists()

    with pytest.raises(EmbodiedError):
        CheckpointManager(tmp_path, keep_last=0)
    with pytest.raises(EmbodiedError):
        CheckpointManager(tmp_path, mode="median")  # type: ignore[arg-type]
    with pytest.raises(EmbodiedError):
        plain.save(-1, None, config=CONFIG, model={})


def test_random_corruption_never_escapes_as_anything_but_checkpoint_error(tmp_path: Path) -> None:
    """Deterministic fuzz: byte flips, truncations and insertions in every file of a checkpoint."""
    model, opt, sched = make_training()
    train_steps(model, opt, sched, 1)
    folder = save_checkpoint(
        tmp_path / "ck", config=CONFIG, model=model.state_dict(), optimizer=opt.state_dict(),
        scheduler=sched.state_dict(), rng=capture_rng(), extra={"step": 1},
    )  # fmt: skip
    original = {p.name: p.read_bytes() for p in folder.iterdir()}
    rnd = random.Random(0)
    for _ in range(300):
        name = rnd.choice(sorted(original))
        data = bytearray(original[name])
        op = rnd.randrange(3)
        if op == 0:
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        elif op == 1:
            del data[rnd.randrange(len(data)) :]
        else:
            at = rnd.randrange(len(data) + 1)
            data[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        (folder / name).write_bytes(bytes(data))
        try:
            loaded = load_checkpoint(folder, training_state=True)
            if loaded.rng is not None:
                restore_rng(loaded.rng)
        except CheckpointError as e:
            assert "\n" not in str(e)
        (folder / name).write_bytes(original[name])
