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
    models, saves = [], []

    class Recorded(train_mod.TrajectoryModel):  # keeps a handle on the model each rank trains
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            models.append(self)

    class Manager(train_mod.CheckpointManager):  # counts the saves each rank makes
        def save(self, *a, **kw):
            saves.append(a[0])
            return super().save(*a, **kw)

    train_mod.TrajectoryModel, train_mod.CheckpointManager = Recorded, Manager
    run = TrainRunConfig(data=(store,), out=out, preset="tiny", workers=0, holdout=0.0, pixels=False)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, window=8, warmup=2, lr=3e-3, log_every=4, eval_every=0,
                      save_every=4, compile=False, seed=5)
    summary = train_from_stores(run, cfg, progress=False)
    assert len(models) == 1 and summary["step"] == steps, (len(models), summary)
    params.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in models[0].state_dict().items()}, str(params / f"rank{rank}.safetensors"))
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


def test_two_gloo_ranks_match_one_process_and_only_rank_0_writes(reach_store, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    ddp_out, ddp_params = tmp_path / "ddp", tmp_path / "ddp_params"
    _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
             str(script), reach_store, str(ddp_out), str(ddp_params), str(B), str(STEPS)], tmp_path)
    one_out, one_params = tmp_path / "one", tmp_path / "one_params"
    _launch([sys.executable, str(script), reach_store, str(one_out), str(one_params), str(2 * B), str(STEPS)], tmp_path)

    r0, r1 = load_file(str(ddp_params / "rank0.safetensors")), load_file(str(ddp_params / "rank1.safetensors"))
    one = load_file(str(one_params / "rank0.safetensors"))
    assert r0.keys() == r1.keys() == one.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0), [k for k in r0 if not torch.equal(r0[k], r1[k])]
    worst = max((r0[k] - one[k]).abs().max().item() for k in r0 if r0[k].is_floating_point())
    for k in r0:
        torch.testing.assert_close(r0[k], one[k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m} (worst over all: {worst:.3g})")

    # only rank 0 saved, and the run folder holds exactly one run's checkpoints
    info0, info1 = (json.loads((ddp_params / f"rank{r}.json").read_text()) for r in (0, 1))
    assert info0 == {"saves": [4, 8], "world": 2} and info1 == {"saves": [], "world": 2}
    ddp_tree, one_tree = _tree(ddp_out), _tree(one_out)
    assert sorted(p.name for p in (ddp_out / "checkpoints").iterdir() if p.is_dir()) == ["step-00000004", "step-00000008"]
    assert [p for p in ddp_tree if "tmp" in p.lower() or "partial" in p.lower()] == []
    shape = lambda t: sorted(p if not p.startswith("tb/") else "tb/" for p in t)  # noqa: E731 - event file names hold host and pid
    assert shape(ddp_tree) == shape(one_tree)
    ck = load_file(str(ddp_out / "checkpoints" / "step-00000008" / "model.safetensors"))
    assert all(torch.equal(ck[k], r0[k]) for k in ck)
