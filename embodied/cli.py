"""The ``embodied`` command. Options come from the frozen configs in :mod:`embodied.config`.

Heavy modules (MuJoCo, torch, Zarr) are imported inside the command handlers, so
``embodied --help`` answers at once. User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from . import __version__
from .config import (
    BenchDataConfig,
    BenchDynamicsConfig,
    BenchEnvsConfig,
    BenchPolicyConfig,
    BenchTrainConfig,
    CollectConfig,
    DemoConfig,
    EnvsCheckConfig,
    EnvsListConfig,
    EnvsVideoConfig,
    EvalConfig,
    InfoConfig,
    PlanConfig,
    ReportConfig,
    RunConfig,
    TrainConfig,
    TrainRunConfig,
    add_arguments,
    from_args,
    parse_kv,
)
from .cli_adapt import ADAPT_COMMANDS
from .cli_data import DATA_COMMANDS, VIDEO_COMMANDS, print_bench, print_json
from .cli_rl import RL_COMMANDS
from .errors import ConfigError, EmbodiedError


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) with a pointer to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _setup_env() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------------------- envs
def cmd_envs_list(cfg: EnvsListConfig) -> int:
    from embodied.envs import ENVS

    rows = [e for e in ENVS.values() if cfg.split is None or e.split == cfg.split]
    if cfg.json:
        print_json([
            {"env_id": e.id, "split": e.split, "description": e.description, "kwargs": e.kwargs,
             "max_episode_steps": e.max_episode_steps}
            for e in rows
        ])
    else:
        width = max(len(e.id) for e in rows) if rows else 0
        for e in rows:
            print(f"{e.id:<{width}}  {e.split:<7}  {e.description}")
    return 0


def _format_check(r: dict[str, Any]) -> str:
    lo, hi = r["expert_success_ci"]
    flags = [] if r["check_env"] else ["check_env FAILED"]
    if not r["deterministic"]:
        flags.append("NOT deterministic")
    if r["mujoco_warnings"]:
        flags.append("warnings: " + ",".join(r["mujoco_warnings"]))
    return (
        f"{r['env_id']:<34} {r['split']:<7} check_env={'ok' if r['check_env'] else 'FAIL'} "
        f"deterministic={'ok' if r['deterministic'] else 'FAIL'} "
        f"expert={r['expert_success']:.2f} [{lo:.2f}, {hi:.2f}] n={r['episodes']}"
        + (f"  ({'; '.join(flags)})" if flags else "")
    )


def run_checks(ids: Sequence[str], episodes: int, seed: int, kwargs: dict[str, Any], log: Callable[[str], None] | None) -> list[dict[str, Any]]:
    """Check every id (see :func:`embodied.evaluate.check_suite_env`), logging one line each."""
    from embodied.envs import entry
    from embodied.evaluate import check_suite_env

    for i in ids:
        entry(i)  # fail fast on an unknown id, before any work
    results = []
    for i in ids:
        r = check_suite_env(i, episodes=episodes, seed=seed, **kwargs)
        results.append(r)
        if log:
            log(_format_check(r))
    return results


def _check_failed(r: dict[str, Any]) -> bool:
    return not (r["check_env"] and r["deterministic"]) or bool(r["mujoco_warnings"]) or r["invalid_episodes"] > 0


def cmd_envs_check(cfg: EnvsCheckConfig) -> int:
    from embodied.envs import env_ids

    ids = list(cfg.ids) or env_ids()
    if cfg.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1, got {cfg.episodes}")
    log = (lambda s: print(s, file=sys.stderr)) if cfg.json else print
    results = run_checks(ids, cfg.episodes, cfg.seed, parse_kv(cfg.kw), log)
    if cfg.json:
        print_json(results)
    return 1 if any(_check_failed(r) for r in results) else 0


def film_expert(env_id: str, out: str | Path, episodes: int = 1, seed: int = 0, size: int = 256, noise: float = 0.0, **kwargs: Any) -> dict[str, Any]:
    """Write expert rollouts of ``env_id`` as an H.264 MP4; returns a summary."""
    from embodied.datasets.video import write_video
    from embodied.envs import ScriptedExpert, make
    from embodied.evaluate import rollout

    env = make(env_id, render_mode="rgb_array", render_size=size, **kwargs)
    frames: list[Any] = []
    try:
        expert = ScriptedExpert(env, noise=noise, seed=seed)
        runs = [rollout(env, expert, seed + i, record=lambda e: frames.append(e.render())) for i in range(episodes)]
        instruction = env.unwrapped.instruction
    finally:
        env.close()
    n = write_video(out, frames, fps=env.metadata.get("render_fps", 20))
    return {"env_id": env_id, "out": str(out), "frames": n, "success": [r["success"] for r in runs], "instruction": instruction}


def cmd_envs_video(cfg: EnvsVideoConfig) -> int:
    from embodied.envs import entry

    entry(cfg.id)
    if cfg.size % 2 or cfg.size < 16:
        raise ConfigError(f"--size must be an even number >= 16, got {cfg.size}")
    r = film_expert(cfg.id, cfg.out, cfg.episodes, cfg.seed, cfg.size, cfg.noise, **parse_kv(cfg.kw))
    print(f"wrote {r['out']} ({r['frames']} frames; success {sum(r['success'])}/{len(r['success'])}; last instruction: {r['instruction']!r})")
    return 0


# ---------------------------------------------------------------------------- bench
def cmd_bench_envs(cfg: BenchEnvsConfig) -> int:
    from embodied.bench import bench_envs, format_table

    rows = bench_envs(seconds=cfg.seconds, repeats=cfg.repeats, progress=lambda s: print(s, file=sys.stderr))
    if cfg.json:
        print_json(rows)
    else:
        print(format_table(rows))
    return 0


def cmd_bench_data(cfg: BenchDataConfig) -> int:
    from embodied.bench_data import bench_data, format_result, missed_targets

    r = bench_data(
        cfg.data, frames=cfg.frames, seconds=cfg.seconds, repeats=cfg.repeats, loader_workers=cfg.workers,
        collect_workers=cfg.collect_workers, device=cfg.device, progress=lambda s: print(s, file=sys.stderr),
    )
    r["missed_targets"] = missed_targets(r)
    print_bench(r, cfg.json, format_result)
    return 0


def cmd_bench_train(cfg: BenchTrainConfig) -> int:
    from embodied.bench_train import bench_train, format_result

    r = bench_train(cfg.preset, pixels=cfg.pixels, window=cfg.window, batch=cfg.batch, steps=cfg.steps, warmup=cfg.warmup,
                    device=cfg.device, compile_blocks=cfg.compile, workers=cfg.workers, data=cfg.data, progress=lambda s: print(s, file=sys.stderr))
    if cfg.json:
        print_json(r)
    else:
        print(format_result(r))
    return 0


def cmd_bench_policy(cfg: BenchPolicyConfig) -> int:
    from embodied.bench_policy import bench_policy, format_result

    if cfg.threads < 0:
        raise ConfigError("--threads must be >= 0 (0 leaves torch's default)")
    r = bench_policy(cfg.preset, context=cfg.context, steps=cfg.steps, device=cfg.device, threads=cfg.threads or None)
    print_json(r) if cfg.json else print(format_result(r))
    return 0


def cmd_bench_dynamics(cfg: BenchDynamicsConfig) -> int:
    from embodied.bench_dynamics import bench_dynamics, format_result, missed_targets

    if not cfg.ckpt:
        raise ConfigError("name the model with --ckpt runs/R (a run folder or a checkpoint folder)")
    r = bench_dynamics(cfg.ckpt, cfg.data, cfg.horizons, cfg.history, cfg.stride, cfg.candidates, cfg.steps, cfg.device, cfg.threads)
    r["missed_targets"] = missed_targets(r)
    print_bench(r, cfg.json, format_result)
    return 0


# ---------------------------------------------------------------------------- collect
def cmd_collect(cfg: CollectConfig) -> int:
    from embodied.collect import CollectSpec, collect

    if not cfg.env:
        raise ConfigError("name at least one environment with --env ID (see `embodied envs list`)")
    if cfg.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {cfg.workers}")
    spec = CollectSpec(
        out=cfg.out, env_ids=cfg.env, episodes=cfg.episodes, policy=cfg.policy, pixels=cfg.pixels, workers=cfg.workers,
        append=cfg.append, seed=cfg.seed, env_kwargs=tuple(sorted(parse_kv(cfg.kw).items())), source=cfg.source,
    )
    r = collect(spec, progress=True)
    if cfg.json:
        print_json(r)
    else:
        print(
            f"wrote {r['episodes']} episodes ({r['frames']} frames, {r['invalid']} invalid, success {r['success_rate']:.2f}) "
            f"to {r['out']} in {r['seconds']:.1f} s ({r['episodes_per_s']:.1f} episodes/s); it now holds {r['total_episodes']}"
        )
    return 0


# ---------------------------------------------------------------------------- train
def cmd_train(run: TrainRunConfig, cfg: TrainConfig) -> int:
    from embodied.training_data import train_from_stores

    r = train_from_stores(run, cfg)
    m = r["metrics"] or {}
    shown = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if isinstance(v, (int, float)))
    print(f"trained {r['params'] / 1e6:.2f}M parameters to step {r['step']} on {r['device']} ({r['bad_steps']} skipped steps); "
          f"checkpoints in {r['out']}/checkpoints" + (f"\n  held-out: {shown}" if shown else ""))
    return 0


def cmd_info(cfg: InfoConfig) -> int:
    from embodied.train import run_info

    r = run_info(cfg.run)
    if cfg.json:
        print_json(r)
        return 0
    model = r["config"].get("model", {})
    print(f"{r['run']}: step {r['step']}, checkpoint {r['checkpoint']}, best {r['best']}")
    print("model: " + ", ".join(f"{k}={v}" for k, v in model.items()))
    print("train: " + ", ".join(f"{k}={v}" for k, v in r["config"].get("train", {}).items()))
    for k, v in (r["metrics"] or {}).items():
        print(f"  {k:<16} {v if v is None else f'{v:.4g}'}")
    return 0


# ---------------------------------------------------------------------------- eval
def cmd_eval(cfg: EvalConfig, plan: PlanConfig = PlanConfig()) -> int:
    from dataclasses import asdict

    from embodied import specs
    from embodied.envs import ENVS, entry
    from embodied.evaluate import INSTRUCTION_SETS, evaluate_policy_on, evaluation_summary, film_policy, summary_lines
    from embodied.policies import FoundationPolicy, PlannerPolicy

    if not cfg.ckpt:
        raise ConfigError("name the model with --ckpt runs/R (a run folder or a checkpoint folder)")
    if cfg.episodes < 1 or cfg.envs < 1 or cfg.videos < 0:
        raise ConfigError("--episodes and --envs must be >= 1 and --videos >= 0")
    ids = list(cfg.env) or [e.id for e in ENVS.values() if e.split == cfg.split]
    for i in ids:
        entry(i)  # unknown ids fail before any work
    constraints = understand_constraints(cfg.constraint)
    direct = FoundationPolicy.load(cfg.ckpt, device=cfg.device)
    policy = direct if plan.policy == "direct" else PlannerPolicy(direct, plan)
    kwargs: dict[str, Any] = {"pixels": direct.model.cfg.pixels} if direct.model.cfg.pixels else {}
    if constraints:
        kwargs["constraints"] = tuple(constraints)
    make_shield = _shield(cfg.shield, direct, cfg.shield_ckpt, cfg.shield_horizon, cfg.shield_threshold, cfg.device)
    log = (lambda s: print(s, file=sys.stderr)) if cfg.json else print
    out = Path(cfg.out or Path(cfg.ckpt) / "eval")
    rows = []
    for instr in dict.fromkeys(cfg.instructions):
        part = evaluate_policy_on(ids, lambda: policy, episodes=cfg.episodes, instructions=instr, n_envs=cfg.envs,
                                  env_kwargs=kwargs, log=log, make_shield=make_shield)
        for row in part:
            row.update(shield=cfg.shield, constraints=[c.describe() for c in constraints])
        for row in part if cfg.videos else ():
            row["videos"] = film_policy(row["env_id"], policy, specs.eval_seeds(min(cfg.videos, cfg.episodes)), out / "videos" / instr,
                                        make_shield=make_shield, **INSTRUCTION_SETS[instr], **kwargs)
        rows += part
    doc = {"ckpt": cfg.ckpt, "instructions": list(dict.fromkeys(cfg.instructions)), "shield": cfg.shield,
           "policy": asdict(plan) if plan.policy == "plan" else "direct", "rows": rows, **evaluation_summary(rows)}
    for line in summary_lines(doc):
        log(line)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(out / "eval.json")
    if cfg.json:
        print_json(doc)
    else:
        print(f"wrote {out / 'eval.json'}")
    return 0


# ---------------------------------------------------------------------------- run
FAMILY_ENVS = {"reach": "embodied/PointReach-v0", "push_zone": "embodied/PointPushZone-v0", "push_dir": "embodied/PointPushDir-v0"}
"""The environment ``embodied run`` sets up for each task family when no --env is given."""


def closest_instructions(text: str, k: int = 3) -> list[str]:
    """The ``k`` supported instructions nearest ``text``, by the sentence encoder (by spelling if it cannot load)."""
    from embodied.envs.instructions import supported_instructions

    return closest_phrasings(text, supported_instructions("train"), k)


def closest_phrasings(text: str, options: list[str], k: int = 3) -> list[str]:
    """The ``k`` of ``options`` nearest ``text``, by the sentence encoder (by spelling if it cannot load)."""
    try:
        from embodied.language import LanguageEncoder

        enc = LanguageEncoder()
        vecs = enc.encode(options)
        q = enc.encode([text])[0]
        order = (vecs @ q).argsort()[::-1]
        return [options[i] for i in order[:k]]
    except EmbodiedError:
        import difflib

        return difflib.get_close_matches(text.lower(), options, n=k, cutoff=0.0)


def understand(text: str) -> Any:
    """The task of an instruction, or a one-line error with the closest supported instructions."""
    from embodied.envs.instructions import InstructionError, parse_instruction

    try:
        return parse_instruction(text)
    except InstructionError as e:
        near = "; ".join(f'"{s}"' for s in closest_instructions(text))
        raise ConfigError(f"cannot run {text[:80]!r}: {e}. Closest supported: {near}") from None


def understand_constraints(texts: Sequence[str]) -> list[Any]:
    """Each sentence as a constraint spec, or a one-line error with the closest supported phrasings."""
    from embodied.envs.constraints import ConstraintError, parse_constraint, supported_constraints

    out = []
    for text in texts:
        try:
            out.append(parse_constraint(text))
        except ConstraintError as e:
            near = "; ".join(f'"{s}"' for s in closest_phrasings(text, supported_constraints()))
            raise ConfigError(f"cannot use the constraint {text[:80]!r}: {e}. Closest supported: {near}") from None
    return out


def _shield(name: str, policy: Any, shield_ckpt: str | None, horizon: int, threshold: float, device: str | None) -> Any:
    """``env -> SafetyFilter`` for ``--shield`` (None for none); learned uses --shield-ckpt's model, else the policy's."""
    if name == "none":
        return None
    from embodied.policies.safety import FilterConfig
    from embodied.shielding import ShieldSpec, load_shield_model, shield_factory

    if threshold <= 0 or horizon < 1:
        raise ConfigError(f"--shield-threshold must be > 0 and --shield-horizon >= 1, got {threshold} and {horizon}")
    spec = load_shield_model(shield_ckpt, device) if shield_ckpt else ShieldSpec(model=policy.model, encode=policy.encode, device=str(policy.device))
    spec.config = FilterConfig(horizon=horizon, threshold=threshold)
    return shield_factory(name, spec)


def cmd_run(cfg: RunConfig) -> int:
    from embodied.envs import make
    from embodied.evaluate import rollout
    from embodied.policies import FoundationPolicy

    if not cfg.ckpt:
        raise ConfigError("name the model with --ckpt runs/R")
    task = understand(cfg.instruction)
    constraints = understand_constraints(cfg.constraint)
    env_id = cfg.env or FAMILY_ENVS[task.family]
    policy = FoundationPolicy.load(cfg.ckpt, device=cfg.device)
    kwargs: dict[str, Any] = {"pixels": policy.model.cfg.pixels} if policy.model.cfg.pixels else {}
    if constraints:
        kwargs["constraints"] = tuple(constraints)
    make_shield = _shield(cfg.shield, policy, None, 3, 0.5, cfg.device)
    if cfg.video:
        kwargs.update(render_mode="rgb_array", render_size=256)
    env = make(env_id, **kwargs)
    frames: list[Any] = []
    try:
        if env.unwrapped.family.name != task.family:
            raise ConfigError(f"{env_id} runs {env.unwrapped.family.name} tasks, the instruction asks for {task.family}; drop --env or pick a {task.family} env")
        record = (lambda e: frames.append(e.render())) if cfg.video else None
        r = rollout(env, policy, cfg.seed, record=record, options={"task": task._asdict(), "instruction": cfg.instruction},
                    shield=make_shield(env) if make_shield else None)
    finally:
        env.close()
    if cfg.video:
        from embodied.datasets.video import write_video
        from embodied.evaluate import mark_frame

        for i in r.get("intervened_steps", []):
            frames[i] = mark_frame(frames[i])
        write_video(cfg.video, frames, fps=20)
    target = f"{task.colour} {task.shape}" + (f" -> {task.zone} zone" if task.zone else f" -> {task.direction}" if task.direction else "")
    safety = f"; constraints: {', '.join(c.describe() for c in constraints)}" if constraints else ""
    if make_shield:
        safety += f"; {cfg.shield} shield intervened {r['interventions']} times"
    print(f"{task.family} ({target}) in {env_id}, seed {cfg.seed}: success {r['success']}, {r['length']} steps, cost {r['cost']:.2f}, "
          f"violations {r['violations']:.0f}{safety}" + (f"; video {cfg.video}" if cfg.video else ""))
    return 0


def cmd_report(cfg: ReportConfig) -> int:
    from embodied.report import build_report

    if not cfg.paths:
        raise ConfigError("give run or evaluation folders, e.g. embodied report runs/R --out report.html")
    r = build_report(list(cfg.paths), cfg.out)
    print(f"wrote {r['out']} ({r['bytes'] / 1e6:.2f} MB: {r['runs']} runs, {r['evaluations']} evaluations, {r['rows']} rows, {r['curves']} adaptation curves)")
    return 0


# ---------------------------------------------------------------------------- demo
DEMO_ENVS = ("embodied/PointReach-v0", "embodied/PointPushZone-v0", "embodied/PointPushDir-v0")
"""The demo's multi-task dataset and evaluation: one embodiment, the three task families."""


def _demo_dataset(path: Path, force: bool, episodes: int = 1200, noisy: int = 900) -> str:
    """Demo step 2: record expert episodes (state observations) and noisy-expert ones, verify the store, draw one
    training batch. Every step carries the expert's own action as its label, so the noisy episodes teach the policy
    how to come back after drifting (DART) and show the dynamics and reward heads failures."""
    from embodied.collect import CollectSpec, collect
    from embodied.datasets.sampler import SamplerConfig, WindowSampler
    from embodied.datasets.store import EpisodeStore
    from embodied.datasets.tools import info

    if force and path.exists():
        import shutil

        shutil.rmtree(path)
    if (path / "zarr.json").exists():
        print(f"[2/5] reusing {path} (--force to redo)")
    else:
        print(f"[2/5] recording {episodes} expert and {noisy} noisy-expert episodes (state observations) into {path}")
        collect(CollectSpec(out=str(path), env_ids=DEMO_ENVS, episodes=episodes, policy="expert", workers=2, command="embodied demo"),
                progress=True)
        collect(CollectSpec(out=str(path), env_ids=DEMO_ENVS, episodes=noisy, policy="noisy:0.4", workers=2, append=True, seed=1,
                            command="embodied demo"), progress=True)
    with EpisodeStore.open(str(path)) as store:
        problems = store.verify()
        summary = info(store)
    if problems:
        raise EmbodiedError(f"{path} failed verification ({len(problems)} damaged episodes); rerun with --force")
    batch = WindowSampler(str(path), SamplerConfig(window=8, batch_size=32)).batch(0)
    print(
        f"    {summary['episodes']} episodes, {summary['steps']} frames, {len(summary['instructions'])} instructions, "
        f"{summary['bytes_total'] / 1e6:.1f} MB on disk ({summary['compression_ratio']:.0f}x smaller than raw); verified; one batch: "
        f"state {tuple(batch['state'].shape)}, action {tuple(batch['action'].shape)}"
    )
    return str(path)


def _demo_train(data: str, run: Path, force: bool, steps: int = 2500) -> str:
    """Demo step 3: train the small model on the demo dataset and show its held-out metrics."""
    from embodied.config import TrainConfig, TrainRunConfig
    from embodied.train import run_info
    from embodied.training_data import train_from_stores

    if force and run.exists():
        import shutil

        shutil.rmtree(run)
    if (run / "checkpoints" / "latest.json").exists():
        print(f"[3/5] reusing {run} (--force to redo)")
    else:
        print(f"[3/5] training the small model for {steps} steps on {data}")
        train_from_stores(TrainRunConfig(data=(data,), out=str(run), preset="small", holdout=0.1, workers=2),
                          TrainConfig(steps=steps, batch_size=64, window=16, warmup=50, eval_every=0, save_every=steps, lr=1e-3))
    m = run_info(run)["metrics"] or {}
    shown = ", ".join(f"{k} {v:.3g}" for k, v in m.items() if isinstance(v, (int, float)))
    print(f"    held-out: {shown or 'none (no episode held out)'}")
    return str(run)


def _demo_report(run: str, out: Path, force: bool, episodes: int = 10) -> str:
    """Demo step 5: evaluate the model on seen and paraphrased instructions, then write the HTML report."""
    from embodied import specs
    from embodied.evaluate import evaluate_policy_on, evaluation_summary, film_policy, summary_lines
    from embodied.policies import FoundationPolicy
    from embodied.report import build_report

    report = out / "report.html"
    if report.exists() and not force:
        print(f"[5/5] reusing {report}")
        return str(report)
    print(f"[5/5] evaluating the model ({episodes} episodes per env and instruction set) and writing the report")
    policy = FoundationPolicy.load(run)
    kwargs = {"pixels": policy.model.cfg.pixels} if policy.model.cfg.pixels else {}
    ids = list(DEMO_ENVS)
    evals: list[str] = []
    all_rows: list[dict[str, Any]] = []
    for instr in ("seen", "paraphrase"):
        rows = evaluate_policy_on(ids, lambda: policy, episodes=episodes, instructions=instr, env_kwargs=kwargs, log=lambda s: print("   ", s))
        if instr == "seen":
            for row in rows:
                row["videos"] = film_policy(row["env_id"], policy, specs.eval_seeds(1), out / "eval" / "videos", **kwargs)
        folder = out / "eval" / instr
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "eval.json").write_text(json.dumps({"ckpt": run, "instructions": [instr], "rows": rows, **evaluation_summary(rows)}, indent=2))
        evals.append(str(folder))
        all_rows += rows
    build_report([run, *evals], str(report))
    for line in summary_lines(evaluation_summary(all_rows), families=False):
        print("   ", line)
    print(f"    {report}")
    return str(report)


def cmd_demo(cfg: DemoConfig) -> int:
    """The main job: check every environment of the suite and film the expert on each task family."""
    from embodied.envs import env_ids

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    checks_path = out / "envs_check.json"
    if checks_path.exists() and not cfg.force:
        results = json.loads(checks_path.read_text())
        print(f"[1/5] reusing {checks_path} ({len(results)} environments; --force to redo)")
    else:
        ids = env_ids()
        print(f"[1/5] checking {len(ids)} environments ({cfg.episodes} expert episodes each)")
        results = run_checks(ids, cfg.episodes, 0, {}, lambda s: print("   ", s, flush=True))
        tmp = checks_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(checks_path)
    data = _demo_dataset(out / "episodes.zarr", cfg.force)
    run = _demo_train(data, out / "run", cfg.force)
    videos = []
    print("[4/5] filming the expert on each task family")
    for env_id in ("embodied/PointPushZone-v0", "embodied/Arm2PushDir-v0", "embodied/Arm3Reach-v0"):
        path = out / (env_id.split("/")[1] + ".mp4")
        if path.exists() and not cfg.force:
            print(f"    reusing {path}")
        else:
            r = film_expert(env_id, path, episodes=2)
            print(f"    {path}: {r['frames']} frames, success {sum(r['success'])}/2")
        videos.append(str(path))
    report = _demo_report(run, out, cfg.force)
    failed = [r["env_id"] for r in results if _check_failed(r)]
    mean = sum(r["expert_success"] for r in results) / len(results)
    print(
        f"\ndone in {time.time() - t0:.0f} s: {len(results)} environments, {len(failed)} failing checks, "
        f"mean expert success {mean:.3f}\n  results: {checks_path}\n  dataset: {data}\n  model:   {run} (`embodied info {run}`)\n"
        f"  videos:  {', '.join(videos)}\n  report:  {report}"
    )
    return 1 if failed else 0


# ---------------------------------------------------------------------------- wiring
COMMANDS: dict[tuple[str, ...], tuple[type | tuple[type, ...], Callable[..., int], str]] = {
    ("envs", "list"): (EnvsListConfig, cmd_envs_list, "list every registered environment: id, split, description"),
    ("envs", "check"): (EnvsCheckConfig, cmd_envs_check, "check_env, determinism, expert success and warnings"),
    ("envs", "video"): (EnvsVideoConfig, cmd_envs_video, "film the scripted expert as an H.264 MP4"),
    ("bench", "envs"): (BenchEnvsConfig, cmd_bench_envs, "env and renderer speed against raw MuJoCo and Reacher-v5"),
    ("bench", "train"): (BenchTrainConfig, cmd_bench_train, "training tokens/s, step time, data wait and MFU (on CUDA)"),
    ("bench", "policy"): (BenchPolicyConfig, cmd_bench_policy, "milliseconds per action with and without the key/value cache"),
    ("bench", "dynamics"): (BenchDynamicsConfig, cmd_bench_dynamics, "open-loop state error on held-out episodes against constant velocity; imagine latency"),
    ("bench", "data"): (BenchDataConfig, cmd_bench_data, "episode store appends, compression and sampler windows/s against naive reads"),
    ("collect",): (CollectConfig, cmd_collect, "record episodes of a policy in suite environments into an episode store"),
    ("train",): ((TrainRunConfig, TrainConfig), cmd_train, "train the model on episode stores (resumable; torchrun for several GPUs)"),
    ("run",): (RunConfig, cmd_run, "do what a plain-English instruction says, with a trained model"),
    ("eval",): ((EvalConfig, PlanConfig), cmd_eval, "success (95%% Wilson CI), return, cost and the expert beside, on fixed evaluation seeds"),
    ("report",): (ReportConfig, cmd_report, "one self-contained HTML file: training curves, success with intervals, videos"),
    ("info",): (InfoConfig, cmd_info, "config and latest metrics of a training run"),
    ("demo",): (DemoConfig, cmd_demo, "the end-to-end demo (the README's main job)"),
    **DATA_COMMANDS,
    **VIDEO_COMMANDS,
    **RL_COMMANDS,
    **ADAPT_COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="embodied", description="Robot foundation models in simulation.")
    parser.add_argument("--version", action="version", version=f"embodied {__version__}")
    groups: dict[str, argparse._SubParsersAction] = {}
    top = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for path, (cls, handler, help_) in COMMANDS.items():
        if len(path) == 1:
            sub = top.add_parser(path[0], help=help_, description=help_.replace("%%", "%"))
        else:
            if path[0] not in groups:
                g = top.add_parser(path[0], help=f"{path[0]} commands", description=f"{path[0]} commands")
                groups[path[0]] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
                groups[path[0]].required = True
            sub = groups[path[0]].add_parser(path[1], help=help_, description=help_.replace("%%", "%"))
        classes = cls if isinstance(cls, tuple) else (cls,)  # a command may take several configs (run + train)
        for c in classes:
            add_arguments(sub, c)
        sub.set_defaults(_config=classes, _handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "_handler"):
        parser.print_help()
        return 2
    _setup_env()
    try:
        return args._handler(*(from_args(c, args) for c in args._config))
    except EmbodiedError as e:
        print(f"embodied: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("embodied: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
