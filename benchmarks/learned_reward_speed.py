"""Env steps per second of a vector of envs under the learned reward: one batch per step vs each env on its own.

    python benchmarks/learned_reward_speed.py --ckpt RUN [--env embodied/PointPushDir-v0] [--envs 8] [--steps 400]
        [--repeats 5] [--threads 1] [--json]

Both paths step the same ``DummyVecEnv`` of ``--envs`` envs (the fixed task of ``--instruction``) with the same random
actions, ``--steps`` vector steps per repeat, alternating paths repeat by repeat; the median of the repeats is reported
with the ratio. ``per_env``: each env wrapped in :class:`embodied.policies.LearnedReward` (two one-token passes per env
step); ``batched``: :class:`embodied.policies.vec_reward.VecLearnedReward` over envs carrying a ``RewardTap`` (two
batched passes per vector step). ``true``: the same envs without any model, the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Callable

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _venv(env_id: str, instruction: str, n: int, wrap: Callable[[Any], Any]) -> Any:
    from stable_baselines3.common.vec_env import DummyVecEnv

    from embodied.envs import FixedTask, StateOnly, make

    venv = DummyVecEnv([lambda: StateOnly(wrap(FixedTask(make(env_id), instruction))) for _ in range(n)])
    venv.seed(0)
    return venv


def _steps_per_s(venv: Any, steps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (steps, venv.num_envs, *venv.action_space.shape)).astype(np.float32)
    venv.reset()
    t0 = time.perf_counter()
    for a in actions:
        venv.step(a)
    return steps * venv.num_envs / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="the reward model: a run or checkpoint folder")
    p.add_argument("--env", default="embodied/PointPushDir-v0")
    p.add_argument("--instruction", default="push the red cube to the right")
    p.add_argument("--envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=400, help="vector steps per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (as `embodied rl --threads`)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    import torch

    from embodied.policies import LearnedReward, RewardModel
    from embodied.policies.vec_reward import RewardTap, VecLearnedReward

    torch.set_num_threads(args.threads)
    rm = RewardModel.load(args.ckpt, device="cpu")
    paths = {
        "true": lambda: _venv(args.env, args.instruction, args.envs, lambda e: e),
        "per_env": lambda: _venv(args.env, args.instruction, args.envs, lambda e: LearnedReward(e, rm, args.instruction)),
        "batched": lambda: VecLearnedReward(_venv(args.env, args.instruction, args.envs, RewardTap), rm, args.instruction),
    }
    venvs = {k: make() for k, make in paths.items()}
    rates: dict[str, list[float]] = {k: [] for k in paths}
    for r in range(args.repeats):
        for k, venv in venvs.items():
            rates[k].append(_steps_per_s(venv, args.steps, seed=r))
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {"env": args.env, "envs": args.envs, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
           "env_steps_per_s": med, "all": rates, "batched_over_per_env": med["batched"] / med["per_env"]}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in med.items():
            print(f"{k:8s} {v:8.0f} env steps/s (median of {args.repeats})")
        print(f"batched / per-env: {out['batched_over_per_env']:.2f}x")


if __name__ == "__main__":
    main()
