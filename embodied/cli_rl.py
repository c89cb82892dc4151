"""The commands of the model as a reward function: ``embodied bench reward`` and ``embodied rl``.

Handlers import their modules lazily (``embodied --help`` stays fast); every user error is
one line (an :class:`~embodied.errors.EmbodiedError`) with exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from .cli_data import print_bench, print_json
from .config import BenchRewardConfig, RLConfig
from .errors import ConfigError

DEFAULT_REWARD_ENVS = ("embodied/PointPushZone-v0", "embodied/PointPushDir-v0")


def cmd_bench_reward(cfg: BenchRewardConfig) -> int:
    from embodied.bench_reward import bench_reward, bench_reward_recorded, format_result
    from embodied.envs import entry

    if not cfg.ckpt:
        raise ConfigError("name the reward model with --ckpt runs/R")
    if not Path(cfg.ckpt).exists():
        raise ConfigError(f"no checkpoint at {cfg.ckpt}; train one with `embodied train --out {cfg.ckpt}`")
    if cfg.max_episodes is not None and not cfg.data:
        raise ConfigError("--max-episodes counts recorded episodes: use it with --data STORE")
    if cfg.max_episodes is not None and cfg.max_episodes < 1:
        raise ConfigError(f"--max-episodes must be >= 1, got {cfg.max_episodes}")

    def progress(line: str) -> None:
        print(line, file=sys.stderr)

    if cfg.data:
        if cfg.env:
            raise ConfigError("--env picks the environments to roll out in; with --data the recorded episodes' own envs are "
                              "scored (per_env in the result): leave --env out")
        r = bench_reward_recorded(cfg.ckpt, cfg.data, max_episodes=cfg.max_episodes, device=cfg.device,
                                  hack_threshold=cfg.hack_threshold, progress=progress)
    else:
        if cfg.episodes < 1 or not cfg.noise or min(cfg.noise) < 0:
            raise ConfigError(f"need --episodes >= 1 and noise scales >= 0, got {cfg.episodes} and {list(cfg.noise)}")
        ids = list(cfg.env) or list(DEFAULT_REWARD_ENVS)
        for i in ids:
            entry(i)
        r = bench_reward(cfg.ckpt, ids, episodes=cfg.episodes, noises=cfg.noise, device=cfg.device, hack_threshold=cfg.hack_threshold,
                         progress=progress)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(r, indent=2))
    print_bench(r, cfg.json, format_result)
    return 0


def cmd_rl(cfg: RLConfig) -> int:
    from embodied.rl import ALGORITHMS, RLSpec, check_spec, format_result, train_rl

    if not cfg.env:
        raise ConfigError("name the environment with --env ID (see `embodied envs list`)")
    algo = ALGORITHMS[cfg.algo]  # an unknown algorithm fails here, in one line
    from embodied.cli import understand_constraints

    constraints = tuple(understand_constraints(cfg.constraint))  # a sentence that fits no constraint fails here, in one line
    spec = RLSpec(env_id=cfg.env, instruction=cfg.instruction, reward=cfg.reward, algo=cfg.algo, steps=cfg.steps, reward_ckpt=cfg.ckpt, ensemble=tuple(cfg.ensemble), disagreement=cfg.disagreement,
                  success_disagreement=cfg.success_disagreement,
                  n_envs=cfg.envs or algo.default_envs, episodes=cfg.episodes, seed=cfg.seed,
                  terminate_on_success=cfg.terminate_on_success, success_threshold=cfg.success_threshold, success_bonus=cfg.success_bonus, reward_ceiling=cfg.reward_ceiling, shaping=cfg.shaping, task_first=cfg.task_first, egocentric=cfg.egocentric, lidar=cfg.lidar, device=cfg.device, threads=cfg.threads, cost_limit=cfg.cost_limit, lagrange_lr=cfg.lagrange_lr,
                  lagrange_optimizer=cfg.lagrange_optimizer, cost_limit_start=cfg.cost_limit_start, cost_limit_anneal=cfg.cost_limit_anneal, cost_critic=cfg.cost_critic, cost_margin=cfg.cost_margin,
                  log_std_init=cfg.log_std_init, squash=cfg.squash, ent_coef=cfg.ent_coef,
                  net_arch=cfg.net_arch, constraints=constraints)
    check_spec(spec)
    r = train_rl(spec, cfg.out, progress=lambda s: print(s, file=sys.stderr))
    print_json(r) if cfg.json else print(format_result(r))
    return 0


RL_COMMANDS: dict[tuple[str, ...], tuple[type, Callable[[Any], int], str]] = {
    ("bench", "reward"): (BenchRewardConfig, cmd_bench_reward, "the model as a reward function: success AUC, reward rank correlation, reward hacking"),
    ("rl",): (RLConfig, cmd_rl, "stable-baselines3 on a language-specified reward (learned or true); true success with 95%% intervals"),
}
