"""The learned-reward RL comparison and the reward validation, run as parallel processes (``benchmarks/device_reward.sh``).

Runs ``embodied rl``'s :func:`embodied.rl.train_rl` and ``embodied bench reward``'s
:func:`embodied.bench_reward.bench_reward` on a machine without the sentence encoder: the
instruction embeddings come from a table computed beforehand where the encoder is installed
(``python benchmarks/reward_rl.py table --out emb.npz``: every instruction the suite's
templates produce, training templates and paraphrases).

    python benchmarks/reward_rl.py table --out .emb/emb.npz                       # where the encoder is
    python benchmarks/reward_rl.py grid --ckpt CKPT --table .emb/emb.npz --out OUT --seconds 480
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

GRID: list[dict[str, Any]] = [
    {"env_id": "embodied/PointReach-v0", "instruction": "touch the red cube", "algo": "ppo", "steps": 100_000, "seeds": (0, 1)},
    {"env_id": "embodied/PointPushDir-v0", "instruction": "push the red cube to the right", "algo": "ppo", "steps": 200_000, "seeds": (0, 1)},
    {"env_id": "embodied/PointPushDir-v0", "instruction": "push the red cube to the right", "algo": "sac", "steps": 60_000, "seeds": (0,)},
]
"""RL cells: each runs on the true and on the learned reward, once per seed (sized for 16 cores and about 8 minutes)."""


class TableEncoder:
    """``encode(instructions)`` from a stored table (instruction -> unit vector); a missing instruction is an error."""

    def __init__(self, path: str) -> None:
        with np.load(path) as z:
            self.table = dict(zip(z["instructions"].tolist(), z["vectors"]))

    def __call__(self, instructions: list[str]) -> np.ndarray:
        missing = [s for s in instructions if s not in self.table]
        if missing:
            raise KeyError(f"no stored embedding for {missing[0]!r}; rebuild the table with `reward_rl.py table`")
        return np.stack([self.table[s] for s in instructions]).astype(np.float32)


def load_reward_model(ckpt: str, table: str) -> Any:
    from embodied.checkpoint import load_checkpoint
    from embodied.config import ModelConfig
    from embodied.model import TrajectoryModel
    from embodied.policies import RewardModel

    ck = load_checkpoint(ckpt)
    model = TrajectoryModel(ModelConfig.from_json(ck.config["model"]))
    model.load_state_dict(ck.model)
    return RewardModel(model, TableEncoder(table), device="cpu")


def cmd_table(args: argparse.Namespace) -> None:
    from embodied.envs.instructions import supported_instructions
    from embodied.language import LanguageEncoder

    texts = supported_instructions("all")
    vecs = LanguageEncoder().encode(texts)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, instructions=np.array(texts), vectors=vecs)
    print(f"{len(texts)} instructions -> {args.out}")


def cmd_one(args: argparse.Namespace) -> None:
    """One RL run (a child process of ``grid``)."""
    import torch

    from embodied.rl import RLSpec, train_rl

    torch.set_num_threads(1)
    cell = json.loads(args.cell)
    rm = load_reward_model(args.ckpt, args.table)
    spec = RLSpec(env_id=cell["env_id"], instruction=cell["instruction"], reward=cell["reward"], algo=cell["algo"], steps=cell["steps"],
                  n_envs=8 if cell["algo"] == "ppo" else 1, episodes=args.episodes, seed=cell["seed"], device="cpu")
    train_rl(spec, args.out, progress=lambda s: print(s, flush=True), reward_model=rm)


def cmd_bench(args: argparse.Namespace) -> None:
    from embodied.bench_reward import bench_reward, format_result

    r = bench_reward(load_reward_model(args.ckpt, args.table), ["embodied/PointPushZone-v0", "embodied/PointPushDir-v0", "embodied/PointReach-v0"],
                     episodes=args.episodes, progress=print)
    Path(args.out).write_text(json.dumps(r, indent=2))
    print(format_result(r))


def cmd_grid(args: argparse.Namespace) -> None:
    out = Path(args.out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = []
    me = [sys.executable, __file__]
    common = ["--ckpt", args.ckpt, "--table", args.table]
    procs.append(("bench", subprocess.Popen([*me, "bench", *common, "--episodes", str(max(int(20 * args.scale), 2)), "--out", str(out / "bench_reward.json")],
                                            stdout=open(runs / "bench.log", "w"), stderr=subprocess.STDOUT, env=env)))
    for cell in GRID:
        for reward in ("true", "learned"):
            for seed in cell["seeds"]:
                c = {k: v for k, v in cell.items() if k != "seeds"} | {"reward": reward, "seed": seed, "steps": max(int(cell["steps"] * args.scale), 64)}
                name = f"{cell['env_id'].split('/')[1]}-{cell['algo']}-{reward}-s{seed}"
                procs.append((name, subprocess.Popen([*me, "one", *common, "--cell", json.dumps(c), "--out", str(runs / name), "--episodes", str(max(int(50 * args.scale), 2))],
                                                     stdout=open(runs / f"{name}.log", "w"), stderr=subprocess.STDOUT, env=env)))
    deadline = time.time() + args.seconds
    for name, p in procs:
        try:
            p.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            p.kill()
    results = {}
    for name, _ in procs:
        f = runs / name / "rl.json"
        if f.exists():
            r = json.loads(f.read_text())
            r.pop("obs_normalizer", None)
            results[name] = r
    (out / "rl_results.json").write_text(json.dumps(results, indent=2))
    with open(out / "logs.txt", "w") as logs:
        for name, _ in procs:
            logs.write(f"==== {name}\n{(runs / (name + '.log')).read_text()[-3000:]}\n")
    summary(results)


def summary(results: dict[str, Any]) -> None:
    for name, r in sorted(results.items()):
        e = r["eval"]
        print(f"{name:<40} success {e['success']:.2f} [{e['success_ci'][0]:.2f}, {e['success_ci'][1]:.2f}]  "
              f"return {e['mean_return']:.1f}  {r['train_seconds']:.0f} s  hacking {r.get('reward_check', {}).get('hacking_episodes')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("--out", required=True)
    for name in ("one", "bench", "grid"):
        p = sub.add_parser(name)
        p.add_argument("--ckpt", required=True)
        p.add_argument("--table", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--episodes", type=int, default=50)
        p.add_argument("--cell", default="{}")
        p.add_argument("--seconds", type=float, default=480)
        p.add_argument("--scale", type=float, default=1.0, help="multiply every cell's steps (a quick check of the whole grid)")
    args = ap.parse_args()
    {"table": cmd_table, "one": cmd_one, "bench": cmd_bench, "grid": cmd_grid}[args.cmd](args)


if __name__ == "__main__":
    main()
