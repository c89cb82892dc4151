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

from embodied import specs


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (lo, hi) for a success rate; z = 1.96 gives 95%. (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rollout(env: Any, policy: Any, seed: int, record: Callable[[Any], None] | None = None, options: dict[str, Any] | None = None,
            shield: Any = None) -> dict[str, Any]:
    """Run one episode with a ``predict``-protocol policy; returns success, return, cost, length, invalid, warnings, instruction.

    With a ``shield`` (a :class:`~embodied.policies.safety.SafetyFilter`) every action passes
    through it first; the result then also has ``interventions`` and ``intervened_steps``.
    """
    obs, info = env.reset(seed=seed, options=options)
    instruction = str(obs.get("instruction", "")) if isinstance(obs, dict) else ""
    if hasattr(policy, "reset"):
        policy.reset()
    if shield is not None:
        shield.reset()
    if record:
        record(env)
    ret = cost = 0.0
    terms = dict.fromkeys(specs.COST_TERMS, 0.0)
    steps, warns, done = 0, [], False
    intervened: list[int] = []
    while not done:
        action, _ = policy.predict(obs, deterministic=False)
        if shield is not None:
            action, sinfo = shield.filter(obs, action)
            if sinfo["intervened"]:
                intervened.append(steps)
            if hasattr(policy, "executed"):
                policy.executed(action)
        obs, reward, terminated, truncated, info = env.step(action)
        if record:
            record(env)
        ret += float(reward)
        cost += float(info.get("cost", 0.0))
        add_cost_terms(terms, info)
        warns += info.get("mujoco_warnings", [])
        steps += 1
        done = terminated or truncated
    invalid = bool(info.get("invalid", False))
    out = {
        "success": bool(info.get("is_success", False)),
        "return": ret,
        "cost": cost,
        "length": steps,
        "invalid": invalid,
        "warnings": warns,
        "instruction": instruction,
        "violations": cost + float(invalid),
        "cost_terms": terms,
    }
    if shield is not None:
        out.update(interventions=len(intervened), intervened_steps=intervened)
    return out


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


# ---------------------------------------------------------------------------- evaluating a policy
INSTRUCTION_SETS: dict[str, dict[str, str]] = {
    "seen": {},
    "paraphrase": {"instruction_split": "paraphrase"},
    "composition": {"target_split": "composition"},
}
"""Which instructions an evaluation uses, as env keyword arguments: training templates, held-out
paraphrases, or held-out colour x shape x family compositions."""


def run_episodes(envs: list[Any], policy: Any, seeds: list[int], deterministic: bool = True,
                 shields: list[Any] | None = None) -> list[dict[str, Any]]:
    """Roll out ``policy`` on ``len(envs)`` envs in lockstep over ``seeds``: one batched ``predict`` per step.

    Every env of a group stays in the batch until the whole group is done (a finished one
    repeats its last observation and its actions are dropped), so a policy that keeps state
    per batch row (the model's caches) sees each episode in one row from start to end.
    ``shields`` (one safety filter per env) filter each row's action before its env steps; a
    policy with an ``executed`` method is told the actions that ran. Each result has
    ``violations`` (the indicator costs of every step, plus one for a diverged episode) and,
    with shields, ``interventions`` (steps whose action the filter replaced).
    """
    results: list[dict[str, Any]] = [{} for _ in seeds]
    for g0 in range(0, len(seeds), len(envs)):
        group = list(range(g0, min(g0 + len(envs), len(seeds))))
        obs = [envs[j].reset(seed=seeds[i])[0] for j, i in enumerate(group)]
        acc = [{"return": 0.0, "cost": 0.0, "length": 0, "invalid": False, "success": False, "instruction": str(o["instruction"]),
                "cost_terms": dict.fromkeys(specs.COST_TERMS, 0.0)} for o in obs]
        done = [False] * len(group)
        if hasattr(policy, "reset"):
            policy.reset()
        for j in range(len(group)):
            if shields is not None:
                shields[j].reset()
                acc[j]["interventions"] = 0
        first = True
        while not all(done):
            stacked = {k: [o[k] for o in obs] if isinstance(obs[0][k], str) else np.stack([o[k] for o in obs]) for k in obs[0]}
            actions, _ = policy.predict(stacked, episode_start=np.full(len(group), first), deterministic=deterministic)
            actions = np.array(actions, dtype=np.float32)
            first = False
            if shields is not None:
                for j in range(len(group)):
                    if not done[j]:
                        actions[j], sinfo = shields[j].filter(obs[j], actions[j])
                        acc[j]["interventions"] += int(sinfo["intervened"])
                if hasattr(policy, "executed"):
                    policy.executed(actions)
            for j in range(len(group)):
                if done[j]:
                    continue
                o, r, term, trunc, info = envs[j].step(actions[j])
                a = acc[j]
                a["return"] += float(r)
                a["cost"] += float(info.get("cost", 0.0))
                add_cost_terms(a["cost_terms"], info)
                a["length"] += 1
                a["invalid"] = bool(info.get("invalid", False))
                a["success"] = bool(info.get("is_success", False)) and not a["invalid"]
                obs[j], done[j] = o, bool(term or trunc)
        for j, i in enumerate(group):
            acc[j]["violations"] = acc[j]["cost"] + float(acc[j]["invalid"])
            results[i] = acc[j]
    return results


def add_cost_terms(totals: dict[str, float], info: dict[str, Any]) -> None:
    """Add one step's named indicator costs (``info["cost_hazard"]``, ...) to an episode's ``totals``."""
    for t in totals:
        totals[t] += float(info.get(t, 0.0))


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """Normal-approximation interval (lo, hi) of a mean: mean +- z x sample std / sqrt(n); z = 1.96 gives 95%.

    (mean, mean) for one value or none. Per-episode counts are skewed, so with few episodes
    this is rough; the rates beside it use Wilson intervals.
    """
    n = len(values)
    if n < 2:
        m = float(values[0]) if n else 0.0
        return m, m
    x = np.asarray(values, dtype=np.float64)
    half = z * float(x.std(ddof=1)) / np.sqrt(n)
    return float(x.mean() - half), float(x.mean() + half)


def safety_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Violations per episode (normal 95% interval), the fraction of episodes with any violation (Wilson),
    which constraint they came from (``violations_by_term``: per episode, each name in ``COST_TERMS``), and
    interventions per episode (normal 95% interval) when the runs were filtered."""
    n = len(runs)
    v = [float(r["violations"]) for r in runs]
    hit = sum(x > 0 for x in v)
    lo, hi = mean_interval(v)
    out: dict[str, Any] = {  # counts are never negative: the interval is clipped at 0
        "violations_per_episode": float(np.mean(v)) if v else 0.0, "violations_per_episode_ci": [max(lo, 0.0), hi],
        "violation_rate": hit / max(n, 1), "violation_rate_ci": list(wilson_interval(hit, n)),
    }
    if runs and "cost_terms" in runs[0]:
        out["violations_by_term"] = {t: float(np.mean([r["cost_terms"][t] for r in runs])) for t in runs[0]["cost_terms"]}
    if runs and "interventions" in runs[0]:
        k = [float(r["interventions"]) for r in runs]
        lo, hi = mean_interval(k)
        out.update(interventions_per_episode=float(np.mean(k)), interventions_per_episode_ci=[max(lo, 0.0), hi])
    return out


def summarize(env_id: str, family: str, instructions: str, runs: list[dict[str, Any]], expert: list[dict[str, Any]] | None, seeds: list[int]) -> dict[str, Any]:
    """One row of an evaluation: success with its 95% Wilson interval, return, cost, length, invalid, the expert beside."""
    n = len(runs)
    wins = sum(r["success"] for r in runs)
    row: dict[str, Any] = {
        "env_id": env_id, "family": family, "instructions": instructions, "episodes": n,
        "successes": wins, "success": wins / max(n, 1), "success_ci": list(wilson_interval(wins, n)),
        "mean_return": float(np.mean([r["return"] for r in runs])) if runs else 0.0,
        "mean_cost": float(np.mean([r["cost"] for r in runs])) if runs else 0.0,
        "mean_length": float(np.mean([r["length"] for r in runs])) if runs else 0.0,
        "invalid": sum(r["invalid"] for r in runs), "seeds": [seeds[0], seeds[-1]] if seeds else [],
    }
    if runs and "violations" in runs[0]:
        row.update(safety_stats(runs))
    if expert is not None:
        ew = sum(r["success"] for r in expert)
        row["expert_episodes"] = len(expert)
        row["expert_successes"] = ew
        row["expert_success"] = ew / max(len(expert), 1)
        row["expert_success_ci"] = list(wilson_interval(ew, len(expert)))
    return row


def evaluate_policy_on(env_ids: list[str], make_policy: Callable[[], Any], episodes: int = 20, instructions: str = "seen",
                       n_envs: int = 4, env_kwargs: dict[str, Any] | None = None, expert: bool = True, seed_offset: int = 0,
                       log: Callable[[str], None] | None = None, make_shield: Callable[[Any], Any] | None = None) -> list[dict[str, Any]]:
    """Evaluate a policy on each env over the fixed evaluation seeds (``embodied.specs.eval_seeds``), expert beside it.

    ``make_shield(env)`` gives each env its safety filter; the rows then carry interventions.
    """
    from embodied.envs import ScriptedExpert, entry, make

    if instructions not in INSTRUCTION_SETS:
        from embodied.errors import ConfigError

        raise ConfigError(f"--instructions must be one of {', '.join(INSTRUCTION_SETS)}, got {instructions!r}")
    seeds = specs.eval_seeds(episodes, seed_offset)
    kwargs = {**INSTRUCTION_SETS[instructions], **(env_kwargs or {})}
    rows = []
    for env_id in env_ids:
        envs = [make(env_id, **kwargs) for _ in range(min(n_envs, episodes))]
        try:
            family = envs[0].unwrapped.family.name
            shields = [make_shield(env) for env in envs] if make_shield else None
            runs = run_episodes(envs, make_policy(), seeds, shields=shields)
            expert_runs = [rollout(envs[0], ScriptedExpert(envs[0]), s) for s in seeds] if expert else None
        finally:
            for env in envs:
                env.close()
        row = {"split": entry(env_id).split, **summarize(env_id, family, instructions, runs, expert_runs, seeds)}
        rows.append(row)
        if log:
            lo, hi = row["success_ci"]
            log(f"{env_id:<34} {family:<10} success {row['success']:.2f} [{lo:.2f}, {hi:.2f}]  expert {row.get('expert_success', float('nan')):.2f}  "
                f"cost {row['mean_cost']:.2f}  length {row['mean_length']:.0f}  invalid {row['invalid']}"
                + (f"  violations/ep {row['violations_per_episode']:.2f}  interventions/ep {row['interventions_per_episode']:.1f}"
                   if "interventions_per_episode" in row else ""))
    return rows


def mark_frame(frame: np.ndarray, width: int = 6) -> np.ndarray:
    """A copy of an (H, W, 3) uint8 frame with a red border ``width`` pixels wide (a step where a safety filter intervened)."""
    out = np.array(frame, copy=True)
    red = np.array([230, 30, 30], dtype=out.dtype)
    out[:width], out[-width:], out[:, :width], out[:, -width:] = red, red, red, red
    return out


def film_policy(env_id: str, policy: Any, seeds: list[int], out: Any, size: int = 256, make_shield: Callable[[Any], Any] | None = None,
                **kwargs: Any) -> list[dict[str, Any]]:
    """Write one H.264 MP4 per seed of ``policy`` acting in ``env_id``; returns each episode's summary and file.

    With ``make_shield(env)`` the actions pass a safety filter and the frames where it
    intervened (the state it replaced the policy's action in) get a red border.
    """
    from pathlib import Path

    from embodied.datasets.video import write_video
    from embodied.envs import make

    out = Path(out)
    env = make(env_id, render_mode="rgb_array", render_size=size, **kwargs)
    films = []
    try:
        for s in seeds:
            frames: list[Any] = []
            shield = make_shield(env) if make_shield else None
            r = rollout(env, policy, s, record=lambda e: frames.append(e.render()), shield=shield)
            for i in r.get("intervened_steps", []):
                frames[i] = mark_frame(frames[i])
            path = out / f"{env_id.split('/')[-1]}-seed{s}.mp4"
            write_video(path, frames, fps=env.metadata.get("render_fps", 20))
            film = {"seed": s, "success": r["success"], "instruction": r["instruction"], "video": str(path), "violations": r["violations"]}
            if shield is not None:
                film.update(interventions=r["interventions"], intervened_steps=r["intervened_steps"])
            films.append(film)
    finally:
        env.close()
    return films


# ---------------------------------------------------------------------------- aggregates over task families
TARGETS: dict[str, tuple[str, float, str]] = {
    "model_vs_expert": ("seen", 0.9, "seen instructions: mean over task families of model success / expert success"),
    "paraphrase_vs_seen": ("paraphrase", 0.9, "held-out paraphrases: mean family success / the same with seen instructions"),
    "composition_vs_seen": ("composition", 0.7, "held-out compositions: mean family success / the same with seen instructions"),
}
"""Quality targets on the train environments: name -> (instruction set, least ratio, what the ratio is)."""


def _counts(row: dict[str, Any]) -> tuple[int, int, int | None, int | None]:
    """(successes, episodes, expert successes, expert episodes) of a row; rows of older files carry only rates."""
    n = int(row["episodes"])
    wins = int(row.get("successes", round(row["success"] * n)))
    if "expert_success" not in row:
        return wins, n, None, None
    en = int(row.get("expert_episodes", n))
    return wins, n, int(row.get("expert_successes", round(row["expert_success"] * en))), en


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def family_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (split, instruction set, task family): the pooled success over its envs with a 95% Wilson interval,
    the expert's pooled success on the same seeds, and the ratio model / expert (None when the expert never succeeds).
    Groups come in the order their first row does."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r.get("split", "?")), str(r["instructions"]), str(r["family"])), []).append(r)
    out = []
    for (split, instr, family), members in groups.items():
        counts = [_counts(r) for r in members]
        wins, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
        agg: dict[str, Any] = {"split": split, "instructions": instr, "family": family, "envs": len(members), "episodes": n,
                               "successes": wins, "success": wins / max(n, 1), "success_ci": list(wilson_interval(wins, n))}
        if all(c[2] is not None for c in counts):
            ew, en = sum(c[2] or 0 for c in counts), sum(c[3] or 0 for c in counts)
            agg.update(expert_successes=ew, expert_episodes=en, expert_success=ew / max(en, 1),
                       expert_success_ci=list(wilson_interval(ew, en)))
        agg["model_vs_expert"] = _ratio(agg["success"], agg.get("expert_success"))
        out.append(agg)
    return out


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None


def evaluation_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The aggregates of evaluation rows (any mix of envs, splits and instruction sets), as a JSON-ready dict.

    ``families``: :func:`family_rows`. ``overall``: per (split, instruction set) the mean over task
    families of success, expert success and model / expert. ``targets``: the ratios of :data:`TARGETS`
    on the train environments, each with its least value and whether it holds (``met`` is None when the
    ratio is undefined: no expert success, or no success with seen instructions); a held-out
    instruction set is compared with seen instructions on the envs evaluated with both.
    """
    fams = family_rows(rows)
    overall = []
    for split, instr in dict.fromkeys((f["split"], f["instructions"]) for f in fams):
        sel = [f for f in fams if (f["split"], f["instructions"]) == (split, instr)]
        overall.append({"split": split, "instructions": instr, "families": [f["family"] for f in sel],
                        "mean_success": _mean([f["success"] for f in sel]),
                        "mean_expert_success": _mean([f.get("expert_success") for f in sel]),
                        "model_vs_expert": _mean([f["model_vs_expert"] for f in sel])})
    train = [r for r in rows if r.get("split") == "train"]
    targets = []
    for name, (instr, least, what) in TARGETS.items():
        if instr == "seen":
            seen = [o for o in overall if (o["split"], o["instructions"]) == ("train", "seen")]
            if not seen:
                continue
            value, families = seen[0]["model_vs_expert"], seen[0]["families"]
        else:
            envs = {r["env_id"] for r in train if r["instructions"] == instr} & {r["env_id"] for r in train if r["instructions"] == "seen"}
            if not envs:
                continue
            both = family_rows([r for r in train if r["env_id"] in envs and r["instructions"] in (instr, "seen")])
            held = [f for f in both if f["instructions"] == instr]
            families = [f["family"] for f in held]
            value = _ratio(_mean([f["success"] for f in held]), _mean([f["success"] for f in both if f["instructions"] == "seen"]))
        targets.append({"name": name, "instructions": instr, "families": families, "value": value, "target": least,
                        "met": None if value is None else bool(value >= least), "what": what})
    return {"families": fams, "overall": overall, "targets": targets}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def summary_lines(summary: dict[str, Any], families: bool = True) -> list[str]:
    """Plain-text lines of :func:`evaluation_summary`'s families (unless ``families`` is False), overall means and targets."""
    lines = []
    for f in summary["families"] if families else ():
        lo, hi = f["success_ci"]
        lines.append(f"family {f['family']:<10} {f['split']:<7} {f['instructions']:<11} success {f['success']:.2f} [{lo:.2f}, {hi:.2f}]  "
                     f"expert {_fmt(f.get('expert_success'))}  model/expert {_fmt(f['model_vs_expert'])}  ({f['envs']} envs, {f['episodes']} episodes)")
    for o in summary["overall"]:
        lines.append(f"mean over {len(o['families'])} families, {o['split']} envs, {o['instructions']} instructions: success {_fmt(o['mean_success'])}, "
                     f"expert {_fmt(o['mean_expert_success'])}, model/expert {_fmt(o['model_vs_expert'])}")
    for t in summary["targets"]:
        verdict = {True: "holds", False: "MISSED", None: "undefined"}[t["met"]]
        lines.append(f"target {t['name']}: {_fmt(t['value'])} (>= {t['target']:.2f}: {verdict}); {t['what']}")
    return lines
