"""Does the learned reward rank behaviour as the true reward does? Learned vs true return of random, noisy and expert play.

    python benchmarks/reward_order.py --ckpt RUN [--env embodied/PointPushDir-v0]
        [--instruction "push the red cube to the right"] [--episodes 12] [--json]

An RL policy starts out acting at random and spends its first hundreds of thousands of steps far from the expert's
states; a learned reward that pays random or wandering play as well as the expert's (its head reads about zero off the
data it was trained on) gives PPO nothing to climb. On ``--episodes`` episodes of each of: uniform random actions, a
``noisy:2.0`` expert, and the expert (the fixed task of ``--instruction``, ending on success, seeds 10,000 + i, never
an evaluation seed), it reports the mean true and learned return per episode, the learned minus true reward per step,
and Spearman's rho of the per-step rewards. The learned returns should order random < noisy < expert as the true do.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def reward_order(ckpt: str, env_id: str, instruction: str, episodes: int) -> dict[str, Any]:
    from embodied.bench_reward import record_episode, score_episodes, spearman
    from embodied.envs import FixedTask, RandomPolicy, ScriptedExpert, make
    from embodied.policies import RewardModel

    rm = RewardModel.load(ckpt, device="cpu")
    env = FixedTask(make(env_id, terminate_on_success=True), instruction)
    players = {"random": lambda s: RandomPolicy(env.action_space, seed=s), "noisy:2.0": lambda s: ScriptedExpert(env, noise=2.0, seed=s),
               "expert": lambda s: ScriptedExpert(env, noise=0.0, seed=s)}
    out: dict[str, Any] = {"ckpt": ckpt, "env": env_id, "instruction": instruction, "episodes": episodes, "players": {}}
    try:
        for name, make_player in players.items():
            eps = [record_episode(env, make_player(s), 10_000 + s) for s in range(episodes)]
            score_episodes(rm, eps)
            learned, true = np.concatenate([e["learned_reward"] for e in eps]), np.concatenate([e["reward"] for e in eps])
            out["players"][name] = {"success": float(np.mean([e["success"] for e in eps])),
                                    "true_return": float(np.mean([e["reward"].sum() for e in eps])),
                                    "learned_return": float(np.mean([e["learned_reward"].sum() for e in eps])),
                                    "learned_minus_true_per_step": float((learned - true).mean()),
                                    "spearman_per_step": spearman(learned, true)}
    finally:
        env.close()
    r = [out["players"][k]["learned_return"] for k in players]
    out["learned_order_matches"] = bool(r[0] < r[1] < r[2])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="the reward model: a run, checkpoint or adapted folder")
    p.add_argument("--env", default="embodied/PointPushDir-v0")
    p.add_argument("--instruction", default="push the red cube to the right")
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    r = reward_order(args.ckpt, args.env, args.instruction, args.episodes)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    for name, v in r["players"].items():
        print(f"{name:10s} success {v['success']:.2f}  return true {v['true_return']:7.1f}  learned {v['learned_return']:7.1f}  "
              f"spearman/step {v['spearman_per_step']:.2f}")
    print("learned returns order random < noisy < expert:", r["learned_order_matches"])


if __name__ == "__main__":
    main()
