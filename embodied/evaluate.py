"""Evaluation: confidence intervals and the environment suite's own checks.

``check_suite_env`` is what ``embodied envs check`` and the demo run for each environment:
Gymnasium's ``check_env``, seeded determinism, the scripted expert's success with a 95%
Wilson interval, MuJoCo warnings and invalid (diverged) episodes.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (lo, hi) for a success rate; z = 1.96 gives 95%. (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rollout(env: Any, policy: Any, seed: int, record: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Run one episode with a ``predict``-protocol policy; returns success, return, cost, length, invalid, warnings."""
    obs, info = env.reset(seed=seed)
    if hasattr(policy, "reset"):
        policy.reset()
    if record:
        record(env)
    ret = cost = 0.0
    steps, warns, done = 0, [], False
    while not done:
        action, _ = policy.predict(obs, deterministic=False)
        obs, reward, terminated, truncated, info = env.step(action)
        if record:
            record(env)
        ret += float(reward)
        cost += float(info.get("cost", 0.0))
        warns += info.get("mujoco_warnings", [])
        steps += 1
        done = terminated or truncated
    return {
        "success": bool(info.get("is_success", False)),
        "return": ret,
        "cost": cost,
        "length": steps,
        "invalid": bool(info.get("invalid", False)),
        "warnings": warns,
    }


def check_determinism(env_id: str, seed: int = 0, steps: int = 40, **kwargs: Any) -> bool:
    """Two fresh instances, the same seed and the same actions give identical observations."""
    from embodied.envs import make

    envs = [make(env_id, **kwargs) for _ in range(2)]
    try:
        rng = np.random.default_rng(seed)
        actions = rng.uniform(-1, 1, size=(steps, *envs[0].action_space.shape)).astype(np.float32)
        traces = []
        for env in envs:
            obs, _ = env.reset(seed=seed)
            trace = [obs]
            for a in actions:
                obs, _, terminated, truncated, _ = env.step(a)
                trace.append(obs)
                if terminated or truncated:
                    break
            traces.append(trace)
        if len(traces[0]) != len(traces[1]):
            return False
        return all(
            a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) if not isinstance(a[k], str) else a[k] == b[k] for k in a)
            for a, b in zip(*traces)
        )
    finally:
        for env in envs:
            env.close()


def check_suite_env(env_id: str, episodes: int = 20, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """All checks of one registered environment, as a JSON-ready dict."""
    from gymnasium.utils.env_checker import check_env

    from embodied.envs import ScriptedExpert, entry, make

    e = entry(env_id)
    result: dict[str, Any] = {"env_id": env_id, "split": e.split}
    env = make(env_id, **kwargs)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                check_env(env.unwrapped, skip_render_check=True)
                result["check_env"] = True
            except Exception as err:  # noqa: BLE001 - any failure of the checker is a failed check, reported
                result["check_env"] = False
                result["check_env_error"] = f"{type(err).__name__}: {err}"
        result["check_env_warnings"] = sorted({str(w.message) for w in caught})
        result["deterministic"] = check_determinism(env_id, seed=seed, **kwargs)
        expert = ScriptedExpert(env)
        runs = [rollout(env, expert, seed + i) for i in range(episodes)]
    finally:
        env.close()
    wins = sum(r["success"] for r in runs)
    result.update(
        expert_success=wins / max(episodes, 1),
        expert_success_ci=list(wilson_interval(wins, episodes)),
        episodes=episodes,
        mean_length=float(np.mean([r["length"] for r in runs])) if runs else 0.0,
        invalid_episodes=sum(r["invalid"] for r in runs),
        mujoco_warnings=sorted({w for r in runs for w in r["warnings"]}),
    )
    return result
