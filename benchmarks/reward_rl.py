"""The learned-reward RL comparison and the reward validation, run as parallel processes (e.g. on a many-core machine).

Runs ``embodied rl``'s :func:`embodied.rl.train_rl` and ``embodied bench reward``'s
:func:`embodied.bench_reward.bench_reward` on a machine without the sentence encoder: the
instruction embeddings come from a table computed beforehand where the encoder is installed
(``python benchmarks/reward_rl.py table --out emb.npz``: every instruction the suite's
templates produce, training templates and paraphrases).

    python benchmarks/reward_rl.py table --out .emb/emb.npz                       # where the encoder is
    python benchmarks/reward_rl.py train --table .emb/emb.npz --out /tmp/r --seconds 150   # data + a reward model
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

REWARD_ENVS = ("embodied/PointPushZone-v0", "embodied/PointPushDir-v0", "embodied/PointReach-v0")
GRID: list[dict[str, Any]] = [
    {"env_id": "embodied/PointReach-v0", "instruction": "touch the red cube", "algo": "ppo", "steps": 80_000, "seeds": (0, 1, 2)},
    {"env_id": "embodied/PointPushDir-v0", "instruction": "push the red cube to the right", "algo": "ppo", "steps": 120_000, "seeds": (0, 1)},
]
"""RL cells: each runs on the true and on the learned reward, once per seed (sized for 16 cores and about 5 minutes)."""


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


def latest_checkpoint(path: str) -> str:
    """A checkpoint folder as given, or a run folder's latest checkpoint (not its best by action NLL)."""
    folder = Path(path)
    latest = folder / "checkpoints" / "latest.json"
    return str(folder / "checkpoints" / json.loads(latest.read_text())["path"]) if latest.exists() else str(folder)


def load_reward_model(ckpt: str, table: str) -> Any:
    from embodied.checkpoint import load_checkpoint
    from embodied.config import ModelConfig
    from embodied.model import TrajectoryModel
    from embodied.policies import RewardModel

    ck = load_checkpoint(latest_checkpoint(ckpt))
    model = TrajectoryModel(ModelConfig.from_json(ck.config["model"]))
    model.load_state_dict(ck.model)
    return RewardModel(model, TableEncoder(table), device="cpu")


def all_instructions(split: str = "all") -> list[str]:
    """Every instruction any env of the suite can say: each family's templates (training and paraphrases) x targets x zones or directions;
    with ``split="train"`` only what training envs say (training templates and targets), as `embodied collect` records."""
    from embodied.envs.instructions import COLOURS, DIRECTIONS, FAMILIES, TRAIN_COLOURS, render_instruction, target_choices, templates
    from embodied.specs import SHAPES

    out = []
    for family in FAMILIES:
        targets = [(c, shape) for c in COLOURS for shape in SHAPES] if split == "all" else target_choices(family, "train")
        for t in templates(family, split):
            for c, shape in targets:
                if "{zone}" in t:
                    out += [render_instruction(t, c, shape, zone=z) for z in TRAIN_COLOURS]
                elif "{dir}" in t:
                    out += [render_instruction(t, c, shape, direction=d) for d in DIRECTIONS]
                else:
                    out.append(render_instruction(t, c, shape))
    return out


def cmd_table(args: argparse.Namespace) -> None:
    from embodied.language import LanguageEncoder

    texts = all_instructions(args.split)
    enc = LanguageEncoder(args.encoder)
    vecs = enc.encode(texts).astype(np.float16 if args.half else np.float32)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, instructions=np.array(texts), vectors=vecs, encoder=np.array(enc.key))
    print(f"{len(texts)} instructions -> {args.out}")


def cmd_train(args: argparse.Namespace) -> None:
    """Collect expert, noisy-expert and random episodes of the reward envs, store the table's embeddings with them, train (bounded by --seconds)."""
    from embodied.collect import CollectSpec, collect
    from embodied.datasets.store import EpisodeStore

    out = Path(args.out)
    data = str(out / "data.zarr")
    t0 = time.time()
    for i, policy in enumerate(("expert", "noisy:0.5", "noisy:1.0", "noisy:2.0", "random")):
        collect(CollectSpec(out=data, env_ids=REWARD_ENVS, episodes=args.episodes, policy=policy, workers=14, append=i > 0, seed=i + 1,
                            command="benchmarks/reward_rl.py train"), progress=False)
    with EpisodeStore.open(data, mode="a") as store:
        texts = store.instructions()
        store.set_embeddings(str(np.load(args.table)["encoder"]), texts, TableEncoder(args.table)(texts))
        n = len(store)
    print(f"collected {n} episodes in {time.time() - t0:.0f} s", flush=True)
    cmd = ["timeout", str(int(args.seconds)), sys.executable, "-m", "embodied", "train", "--data", data, "--out", str(out / "run"),
           "--preset", args.preset, "--steps", str(args.steps), "--batch-size", "128", "--window", "16", "--lr", "1e-3", "--warmup", "100",
           "--workers", "0", "--holdout", "0.05", "--eval-every", "1000", "--save-every", "500", "--keep-last", "20", "--no-compile"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, stdout=sys.stdout, stderr=subprocess.STDOUT)


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

    r = bench_reward(load_reward_model(args.ckpt, args.table), list(REWARD_ENVS),
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
    t.add_argument("--encoder", default="all-MiniLM-L6-v2.tokens16", help="the encoder (and token outputs) the model reads")
    t.add_argument("--split", choices=("all", "train"), default="all", help="train: only what training envs say")
    t.add_argument("--half", action="store_true", help="store float16 (half the size; read back as float32)")
    tr = sub.add_parser("train")
    tr.add_argument("--table", required=True)
    tr.add_argument("--out", required=True)
    tr.add_argument("--episodes", type=int, default=200, help="episodes per collection policy (round-robin over the envs)")
    tr.add_argument("--preset", default="small")
    tr.add_argument("--steps", type=int, default=4000)
    tr.add_argument("--seconds", type=float, default=150)
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
    {"table": cmd_table, "train": cmd_train, "one": cmd_one, "bench": cmd_bench, "grid": cmd_grid}[args.cmd](args)


if __name__ == "__main__":
    main()
