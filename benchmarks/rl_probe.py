"""Look inside a saved `embodied rl` policy on keep-out zones: which episodes violate, and does it see the zones at all.

    python benchmarks/rl_probe.py RUN [--episodes 200] [--out probe.json]

RUN is the --out folder of an `embodied rl` run with keep-out zones (e.g. `--constraint "stay out of the blue zone"`).
On the run's evaluation seeds (the policy acting deterministically, as in its rl.json) it reports:

- each violating episode: seed, cost, steps, success, and whether the straight line from the fingertip's start to
  the target crosses a keep-out zone (``crossing``) or not (a near miss or a wander);
- ``crossing_starts``: how many starts have such a line at all: a policy that ignores the zones and heads straight
  for the target violates on about these;
- ``sensitivity``: the mean absolute change of the action (clipped to its bounds, units of the action range) when
  each keep-out zone, or the target, is moved 5 cm in each of four directions at the episodes' first states. A policy
  that steers round zones moves its action when a zone moves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHIFT = 0.05
"""How far (m) the probe moves a zone or the target."""


def probe(run: str, episodes: int) -> dict[str, Any]:
    from embodied import specs
    from embodied.envs import FixedTask, make
    from embodied.envs.layouts import segment_distance
    from embodied.rl import load_rl_policy
    from embodied.specs import HAZARD_FEATURES, N_HAZARDS, OBJECT_FEATURES, state_slices

    sl = state_slices()
    policy, spec = load_rl_policy(run)
    env = FixedTask(make(spec.env_id, **spec.env_kwargs()), spec.instruction)
    u = env.unwrapped
    low, high = env.action_space.low, env.action_space.high
    firsts, targets, violating, crossing_starts = [], [], [], 0
    for seed in specs.eval_seeds(episodes):
        obs, _ = env.reset(seed=int(seed))
        first = np.asarray(obs["state"], dtype=np.float32)
        target = next(i for i in range(len(u._colours)) if (u._colours[i], u._shapes[i]) == (env.task.colour, env.task.shape))
        zones = first[sl["hazards"]].reshape(-1, HAZARD_FEATURES)
        zones = zones[zones[:, 6] > 0.5]
        start, goal = first[sl["ee_pos"]], first[sl["objects"]].reshape(-1, OBJECT_FEATURES)[target, :2]
        crossing = any(segment_distance(z[:2], start, goal) < z[2] for z in zones)
        crossing_starts += crossing
        firsts.append(first)
        targets.append(target)
        cost, steps, done, info = 0.0, 0, False, {}
        while not done:
            action, _ = policy.predict(obs)
            obs, _, terminated, truncated, info = env.step(action)
            cost += float(info.get("cost", 0.0))
            steps += 1
            done = terminated or truncated
        if cost > 0:
            violating.append({"seed": int(seed), "cost": cost, "steps": steps, "success": bool(info.get("is_success", False)),
                              "crossing": bool(crossing)})
    env.close()

    states = np.stack(firsts)
    base = np.clip(policy.mean_actions(states), low, high)

    def moved(columns: list[np.ndarray]) -> float:
        """Mean |action change| / action range when the (x, y) at ``columns`` (one index pair per state) moves."""
        out = []
        for d in ((SHIFT, 0), (0, SHIFT), (-SHIFT, 0), (0, -SHIFT)):
            x = states.copy()
            for row, col in enumerate(columns):
                x[row, col:col + 2] += d
            out.append(np.abs(np.clip(policy.mean_actions(x), low, high) - base) / (high - low))
        return float(np.mean(out))

    hz0 = sl["hazards"].start
    sens_zone = [moved([hz0 + k * HAZARD_FEATURES] * len(states)) if (states[:, hz0 + k * HAZARD_FEATURES + 6] > 0.5).all() else None
                 for k in range(N_HAZARDS)]  # None: a slot not present in every episode
    target_cols = [sl["objects"].start + t * OBJECT_FEATURES for t in targets]
    return {"run": run, "env_id": spec.env_id, "constraints": [c.describe() for c in spec.constraints], "episodes": episodes,
            "mean_cost": float(sum(v["cost"] for v in violating) / episodes), "violating_episodes": violating,
            "crossing_starts": int(crossing_starts),
            "violating_crossing": int(sum(v["crossing"] for v in violating)),
            "sensitivity": {"keep_out_zones": sens_zone, "target": moved(target_cols)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the --out folder of an `embodied rl` run")
    p.add_argument("--episodes", type=int, default=200, help="evaluation seeds to roll out (default 200, as the runs' eval)")
    p.add_argument("--out", default="", help="also write the JSON here")
    a = p.parse_args(argv)
    from embodied.errors import EmbodiedError

    try:
        r = probe(a.run, a.episodes)
    except EmbodiedError as e:
        print(f"rl_probe: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(r, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
