"""Collection: roll out a policy in suite environments and record the episodes in a store.

``embodied collect`` lives here (application layer: it wires envs and datasets). Episodes
run in worker processes (``spawn``; each keeps its environments open between episodes) and
come back in episode order to the one writer in the main process, which commits them one
by one, so an interrupted collection keeps every episode committed so far and
``--append`` resumes it.

Every episode records what regenerates it: env id and keyword arguments, the episode seed
(:func:`embodied.specs.collection_seed` of the run seed and the episode number) and the
policy; :func:`regenerate` replays it bit for bit. A diverged episode (MuJoCo
instability, ``info["invalid"]``) is stored with ``valid=False`` and never sampled.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from embodied import specs
from embodied.errors import ConfigError

POLICIES = ("expert", "noisy:SIGMA", "hasty", "hasty:SIGMA", "random", "halt", "wander", "astray", "rl:RUN")


@dataclass(frozen=True)
class EpisodeJob:
    """Everything that determines one recorded episode."""

    number: int
    """Episode number within the collection (its seed derives from it)."""
    env_id: str
    seed: int
    policy: str
    env_kwargs: tuple[tuple[str, Any], ...] = ()
    source: str = ""
    labels: bool = True
    """Also record the expert's action at every step (``expert_action``)."""


def parse_policy(spec: str) -> tuple[str, float]:
    """``"expert"`` -> ("expert", 0), ``"noisy:0.3"`` -> ("expert", 0.3), ``"random"`` -> ("random", 0),
    ``"halt"`` -> ("halt", 0) (the expert that stops at a random step: :class:`embodied.envs.HaltingExpert`),
    ``"wander"`` -> ("wander", 0) (random commands held for 5 to 30 steps: :class:`embodied.envs.WanderPolicy`),
    ``"astray"`` -> ("astray", 0) (the expert of another direction or zone: :class:`embodied.envs.AstrayExpert`),
    ``"hasty"`` -> ("hasty", 0) and ``"hasty:0.3"`` -> ("hasty", 0.3) (the expert sped up by a gain drawn per episode
    from [1, 3], with that noise: :class:`embodied.envs.HastyExpert`), ``"rl:runs/RL"`` -> ("rl", 0) (the policy an
    ``embodied rl`` run saved in that folder, on its run's task)."""
    kind, _, arg = spec.partition(":")
    if kind == "rl":
        if not arg:
            raise ConfigError(f"policy {spec!r}: name the run, e.g. rl:runs/RL (the --out folder of `embodied rl`)")
        return kind, 0.0
    if kind in ("expert", "random", "halt", "wander", "astray", "hasty") and not arg:
        return kind, 0.0
    if kind in ("noisy", "hasty"):
        try:
            sigma = float(arg)
        except ValueError:
            sigma = -1.0
        if sigma > 0:
            return ("expert" if kind == "noisy" else kind), sigma
        raise ConfigError(f"policy {spec!r}: {kind}:SIGMA needs a positive noise scale, e.g. {kind}:0.3")
    raise ConfigError(f"unknown policy {spec!r}; use one of {', '.join(POLICIES)}")


_RL_POLICIES: dict[str, tuple[Any, Any]] = {}
"""The ``embodied rl`` policies this process has loaded, by run folder (each loads once per worker)."""


def _rl_policy(env: Any, folder: str) -> tuple[Any, Any]:
    """The run's policy, and ``env`` asking every episode for the run's task (:class:`embodied.envs.FixedTask`)."""
    from embodied.envs import FixedTask
    from embodied.rl import load_rl_policy

    if folder not in _RL_POLICIES:
        _RL_POLICIES[folder] = load_rl_policy(folder)
    policy, run = _RL_POLICIES[folder]
    env_id = getattr(env.spec, "id", None)
    if env_id != run.env_id:
        raise ConfigError(f"policy rl:{folder} was trained on {run.env_id}; collect it there (--env {run.env_id}), not on {env_id}")
    return FixedTask(env, run.instruction), policy


def _make_policy(env: Any, spec: str, seed: int) -> tuple[Any, Any]:
    """The env an episode of policy ``spec`` runs in (``env``, or for an rl policy ``env`` fixed to its run's task) and
    the policy."""
    kind, sigma = parse_policy(spec)
    if kind == "rl":
        return _rl_policy(env, spec.partition(":")[2])
    return env, _policy(env, kind, sigma, seed)


def _policy(env: Any, kind: str, sigma: float, seed: int) -> Any:
    from embodied.envs import AstrayExpert, HaltingExpert, HastyExpert, RandomPolicy, ScriptedExpert, WanderPolicy

    if kind == "hasty":
        return HastyExpert(env, noise=sigma, seed=seed)
    if kind == "astray":
        return AstrayExpert(env, seed=seed)
    if kind == "random":
        return RandomPolicy(env.action_space, seed=seed)
    if kind == "wander":
        return WanderPolicy(env.action_space, seed=seed)
    if kind == "halt":
        horizon = getattr(env.spec, "max_episode_steps", None)
        if not horizon:
            raise ConfigError("policy 'halt' needs a registered env with a step limit (make it with embodied.envs.make)")
        return HaltingExpert(env, horizon=max(horizon // 2, 1), seed=seed)  # halts in the first half: mostly before success
    return ScriptedExpert(env, noise=sigma, seed=seed)


def record_episode(env: Any, policy: Any, seed: int, labels: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Roll out one episode; returns its frames (store features) and a summary for its metadata.

    Frames: the observation at each step, the action taken and its reward, cost and success;
    the final observation is kept as a last frame without an action. With ``labels`` (an env
    with a scripted expert), also what that expert would have done at each step, whoever acted,
    and each named cost term of each step (:data:`embodied.specs.COST_BY_TERM`).
    """
    obs, info = env.reset(seed=seed)
    if hasattr(policy, "reset"):
        policy.reset()
    pixels = specs.PIXELS in obs
    states, frames, actions, rewards, costs, successes = [obs[specs.STATE]], [obs[specs.PIXELS]] if pixels else [], [], [], [], []
    instruction = str(obs.get(specs.INSTRUCTION, ""))
    done = terminated = truncated = invalid = False
    warnings: list[str] = []
    expert = getattr(getattr(env, "unwrapped", env), "expert_action", None) if labels else None
    experts: list[np.ndarray] = []
    terms: list[list[float]] = []
    while not done:
        if expert is not None:
            experts.append(np.asarray(expert(), dtype=np.float32))
        action, _ = policy.predict(obs, deterministic=False)
        action = np.asarray(action, dtype=np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(float(reward))
        costs.append(float(info.get(specs.INFO_COST, 0.0)))
        terms.append([float(info.get(t, 0.0)) for t in specs.COST_TERMS])
        successes.append(bool(info.get(specs.INFO_SUCCESS, False)))
        invalid = bool(info.get(specs.INFO_INVALID, False))
        warnings += list(info.get(specs.INFO_WARNINGS, []))
        states.append(obs[specs.STATE])
        if pixels:
            frames.append(obs[specs.PIXELS])
        done = terminated or truncated
    steps = {
        specs.STATE: np.asarray(states, dtype=np.float32),
        specs.ACTION: np.asarray(actions, dtype=np.float32).reshape(-1, specs.ACTION_DIM),
        specs.REWARD: np.asarray(rewards, dtype=np.float32),
        specs.COST: np.asarray(costs, dtype=np.float32),
        specs.SUCCESS: np.asarray(successes, dtype=bool),
    }
    if pixels:
        steps[specs.PIXELS] = np.asarray(frames, dtype=np.uint8)
    if expert is not None:
        steps[specs.EXPERT_ACTION] = np.asarray(experts, dtype=np.float32).reshape(-1, specs.ACTION_DIM)
    if labels:
        steps[specs.COST_BY_TERM] = np.asarray(terms, dtype=np.float32).reshape(-1, len(specs.COST_TERMS))
    summary = {
        specs.INSTRUCTION: instruction,
        specs.VALID: not invalid,
        "success": bool(successes[-1]) if successes else False,
        "return": float(np.sum(rewards)),
        "cost": float(np.sum(costs)),
        "steps": len(actions),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "warnings": sorted(set(warnings)),
    }
    return steps, summary


# ---------------------------------------------------------------------------- workers
_ENVS: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}


def _env(env_id: str, env_kwargs: tuple[tuple[str, Any], ...]) -> Any:
    key = (env_id, env_kwargs)
    if key not in _ENVS:
        from embodied.envs import make

        _ENVS[key] = make(env_id, **dict(env_kwargs))
    return _ENVS[key]


def run_job(job: EpisodeJob) -> tuple[EpisodeJob, dict[str, np.ndarray], dict[str, Any]]:
    """Run one job in this process (envs are cached per process); returns the job, frames and metadata."""
    from embodied import __version__

    env = _env(job.env_id, job.env_kwargs)
    env, policy = _make_policy(env, job.policy, job.seed)
    steps, summary = record_episode(env, policy, job.seed, labels=job.labels)
    meta = {
        **summary,
        "env_id": job.env_id,
        "env_kwargs": dict(job.env_kwargs),
        "seed": job.seed,
        "policy": job.policy,
        "source": job.source,
        "collect_index": job.number,
        "tool": f"embodied {__version__}",
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return job, steps, meta


def _close_envs() -> None:
    for env in _ENVS.values():
        env.close()
    _ENVS.clear()


def regenerate(meta: dict[str, Any], labels: bool = True) -> dict[str, np.ndarray]:
    """Re-run a recorded episode from its metadata (env, kwargs, seed, policy): the same frames, bit for bit (and the
    expert's labels with ``labels``)."""
    from embodied.envs import make

    env = make(meta["env_id"], **meta.get("env_kwargs", {}))
    try:
        task_env, policy = _make_policy(env, meta["policy"], int(meta["seed"]))
        steps, _ = record_episode(task_env, policy, int(meta["seed"]), labels=labels)
    finally:
        env.close()
    return steps


class _StopOnInterrupt:
    """Ctrl-C (SIGINT) in the main thread sets a flag that :meth:`check` turns into KeyboardInterrupt between episodes.

    A KeyboardInterrupt raised wherever the main thread happens to be (inside the store's write, or while it waits
    on the worker pool) can be swallowed by the code it lands in, and the run then goes on to the end; a flag
    checked at one known point cannot. Elsewhere than the main thread the handler is left as it is."""

    def __init__(self) -> None:
        import signal
        import threading

        self.interrupted = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.interrupted = True

    def check(self) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    def restore(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _results(jobs: Sequence[EpisodeJob], workers: int) -> Iterator[tuple[EpisodeJob, dict[str, np.ndarray], dict[str, Any]]]:
    """Results in job order, from ``workers`` spawned processes (or this one when ``workers <= 1``)."""
    if workers <= 1:
        try:
            for job in jobs:
                yield run_job(job)
        finally:
            _close_envs()
        return
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # spawn: no inherited EGL or MuJoCo state; a worker that dies raises BrokenProcessPool here.
    # Workers ignore Ctrl-C: the main process stops the run and lets them finish their episode and exit quietly.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_ignore_sigint) as pool:
        pending: deque = deque()
        todo = iter(jobs)
        try:
            for job in todo:
                pending.append(pool.submit(run_job, job))
                if len(pending) >= 2 * workers:  # bounded look-ahead: results never pile up in memory
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


@dataclass(frozen=True)
class CollectSpec:
    """One collection run (the options of ``embodied collect``)."""

    out: str
    env_ids: tuple[str, ...]
    episodes: int
    policy: str = "expert"
    pixels: int | None = None
    workers: int = 1
    append: bool = False
    seed: int = 0
    env_kwargs: tuple[tuple[str, Any], ...] = ()
    source: str = ""
    chunk_len: int = 64
    command: str = field(default_factory=lambda: " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)))


def collect(spec: CollectSpec, progress: bool = True, on_episode: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``spec``; returns a summary (episodes written, valid, success rate, frames, seconds)."""
    from embodied.datasets.store import EpisodeStore, StoreError, default_features
    from embodied.envs import entry

    kind = parse_policy(spec.policy)[0]
    if kind == "rl":
        from embodied.rl import load_rl_policy

        run = load_rl_policy(spec.policy.partition(":")[2])[1]  # a missing or broken run fails here, in one line
        if set(spec.env_ids) != {run.env_id}:
            raise ConfigError(f"policy {spec.policy} was trained on {run.env_id}; collect it there (--env {run.env_id})")
    for env_id in spec.env_ids:
        family = {**entry(env_id).kwargs, **dict(spec.env_kwargs)}.get("family")  # unknown ids fail before any work
        if kind == "astray" and family not in ("push_dir", "push_zone"):
            raise ConfigError(f"policy 'astray' pushes the named object another way: {env_id} is a {family} env; use it on push_dir or push_zone envs")
    if spec.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {spec.episodes}")
    if spec.pixels is not None and spec.pixels not in specs.PIXEL_SIZES:
        raise ConfigError(f"--pixels must be one of {specs.PIXEL_SIZES}, got {spec.pixels}")
    kwargs = dict(spec.env_kwargs)
    if spec.pixels:
        kwargs["pixels"] = spec.pixels
    features = default_features(pixels=spec.pixels, labels=True)
    files_exist = _store_exists(spec.out)
    if files_exist and not spec.append:
        raise StoreError(f"{spec.out} already exists; pass --append to add episodes to it, or choose a new --out")
    if files_exist:
        store = EpisodeStore.open(spec.out, mode="a")
        for optional in (specs.EXPERT_ACTION, specs.COST_BY_TERM):  # a store from before these: append as it was recorded
            if optional not in store.features:
                features.pop(optional)
        if store.features != features:
            have = store.features.get(specs.PIXELS)
            store.close()
            raise StoreError(
                f"{spec.out} holds {'pixels ' + str(have.shape[0]) if have else 'no pixels'}, this run records "
                f"{'pixels ' + str(spec.pixels) if spec.pixels else 'no pixels'}; match --pixels or choose a new --out"
            )
    else:
        store = EpisodeStore.create(
            spec.out, features, control_hz=20.0, chunk_len=spec.chunk_len,
            provenance={"command": spec.command, "collect_seed": spec.seed},
        )
    with store:
        first = max((int(m.get("collect_index", -1)) for m in store.metas()), default=-1) + 1
        env_kwargs = tuple(sorted(kwargs.items()))
        source = spec.source or f"collect:{spec.policy}"
        jobs = [
            EpisodeJob(n, spec.env_ids[n % len(spec.env_ids)], specs.collection_seed(spec.seed, n), spec.policy, env_kwargs, source,
                       labels=specs.EXPERT_ACTION in features)
            for n in range(first, first + spec.episodes)
        ]
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="ep", desc="collect", disable=not progress, file=sys.stderr, dynamic_ncols=True)
        t0 = time.perf_counter()
        written = valid = success = frames = 0
        stop = _StopOnInterrupt()
        try:
            for job, steps, meta in _results(jobs, spec.workers):
                stop.check()  # Ctrl-C: stop between episodes, every one written so far stays
                steps = {k: v for k, v in steps.items() if k in features}  # what this store records
                index = store.add_episode(steps, meta)
                written += 1
                valid += bool(meta[specs.VALID])
                success += bool(meta["success"] and meta[specs.VALID])
                frames += len(steps[specs.STATE])
                bar.update(1)
                bar.set_postfix(success=f"{success / written:.2f}", invalid=written - valid, refresh=False)
                if on_episode:
                    on_episode(index, meta)
            stop.check()
        finally:
            stop.restore()
            bar.close()
        seconds = time.perf_counter() - t0
        return {
            "out": spec.out, "episodes": written, "valid": valid, "invalid": written - valid,
            "success_rate": success / max(written, 1), "frames": frames, "seconds": seconds,
            "episodes_per_s": written / max(seconds, 1e-9), "total_episodes": len(store), "first_index": first,
        }


def _store_exists(url: str) -> bool:
    from embodied.datasets.files import StoreFiles

    return StoreFiles(url).exists("zarr.json")
