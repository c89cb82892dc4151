"""DDP under ``torchrun`` (gloo on CPU): 2 ranks end with identical weights, match one process at
the same global batch, and only rank 0 writes the run folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from embodied.collect import CollectSpec, collect

B = 8  # windows per rank; the single process takes 2 * B
STEPS = 8

DRIVER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    import embodied.train as train_mod
    from embodied.config import TrainConfig, TrainRunConfig
    from embodied.training_data import train_from_stores

    store, out, params, batch_size, steps = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    rank = int(os.environ.get("RANK", 0))
    models, saves, init = [], [], {}

    class Recorded(train_mod.TrajectoryModel):  # keeps a handle on the model each rank trains, and its initial weights
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            models.append(self)
            init.update({k: p.detach().clone() for k, p in self.named_parameters()})

    class Manager(train_mod.CheckpointManager):  # counts the saves each rank makes
        def save(self, *a, **kw):
            saves.append(a[0])
            return super().save(*a, **kw)

    train_mod.TrajectoryModel, train_mod.CheckpointManager = Recorded, Manager
    run = TrainRunConfig(data=(store,), out=out, preset="tiny", workers=0, holdout=0.0, pixels=False, imitate="all")
    cfg = TrainConfig(steps=steps, batch_size=batch_size, window=8, warmup=2, lr=1e-3, log_every=4, eval_every=0,
                      save_every=4, compile=False, seed=5)
    summary = train_from_stores(run, cfg, progress=False)
    assert len(models) == 1 and summary["step"] == steps, (len(models), summary)
    params.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in models[0].state_dict().items()}, str(params / f"rank{rank}.safetensors"))
    save_file({k: v.contiguous() for k, v in init.items()}, str(params / f"init{rank}.safetensors"))
    (params / f"rank{rank}.json").write_text(json.dumps({"saves": saves, "world": int(os.environ.get("WORLD_SIZE", 1))}))
    """
)


@pytest.fixture(scope="module")
def reach_store(tmp_path_factory) -> str:
    """40 noisy-expert episodes of PointReach (state only)."""
    out = str(tmp_path_factory.mktemp("ddp_data") / "reach.zarr")
    collect(CollectSpec(out=out, env_ids=("embodied/PointReach-v0",), episodes=40, policy="noisy:0.2", seed=1), progress=False)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MUJOCO_GL=env.get("MUJOCO_GL", "egl"), HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    return env


def _launch(cmd: list[str], cwd: Path) -> None:
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(reach_store, tmp_path_factory) -> Path:
    """The same 8 steps twice: 2 gloo ranks of B windows under torchrun, and one process of 2 * B windows."""
    root = tmp_path_factory.mktemp("ddp_runs")
    script = root / "driver.py"
    script.write_text(DRIVER)
    _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
             str(script), reach_store, str(root / "ddp"), str(root / "ddp_params"), str(B), str(STEPS)], root)
    _launch([sys.executable, str(script), reach_store, str(root / "one"), str(root / "one_params"), str(2 * B), str(STEPS)], root)
    return root


def test_both_ranks_end_identical_and_only_rank_0_writes(runs):
    params = runs / "ddp_params"
    r0, r1 = load_file(str(params / "rank0.safetensors")), load_file(str(params / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0), [k for k in r0 if not torch.equal(r0[k], r1[k])]
    init = load_file(str(params / "init0.safetensors"))
    assert max((r0[k] - init[k]).abs().max().item() for k in init) > 1e-3  # the weights moved: the equality says something

    info0, info1 = (json.loads((params / f"rank{r}.json").read_text()) for r in (0, 1))
    assert info0 == {"saves": [4, 8], "world": 2} and info1 == {"saves": [], "world": 2}
    ddp_tree, one_tree = _tree(runs / "ddp"), _tree(runs / "one")
    assert sorted(p.name for p in (runs / "ddp" / "checkpoints").iterdir() if p.is_dir()) == ["step-00000004", "step-00000008"]
    assert [p for p in ddp_tree if "tmp" in p.lower() or "partial" in p.lower()] == []
    shape = lambda t: sorted(p if not p.startswith("tb/") else "tb/" for p in t)  # noqa: E731 - event file names hold host and pid
    assert shape(ddp_tree) == shape(one_tree)  # one writer: the same files as a single process writes, no more
    ck = load_file(str(runs / "ddp" / "checkpoints" / "step-00000008" / "model.safetensors"))
    assert ck.keys() == r0.keys() and all(torch.equal(ck[k], r0[k]) for k in ck)


def test_two_ranks_match_one_process_at_the_same_global_batch(runs):
    """Each rank divides its masked sums by the count over all ranks / world, so DDP's gradient average is
    the masked mean over the global batch (a rank's own count would weight ranks by their padding)."""
    r0 = load_file(str(runs / "ddp_params" / "rank0.safetensors"))
    one = load_file(str(runs / "one_params" / "rank0.safetensors"))
    assert r0.keys() == one.keys()
    worst = max((r0[k] - one[k]).abs().max().item() for k in r0)
    for k in r0:  # the gradients are summed in another order: equal up to rounding
        torch.testing.assert_close(r0[k], one[k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m} (worst over all: {worst:.3g})")
