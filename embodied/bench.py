"""Speed benchmark of the tabletop suite against bare MuJoCo and a Gymnasium peer.

:func:`bench_envs` measures, for each embodiment on its push_zone env
(``embodied/<Embodiment>PushZone-v0``):

* ``env_steps_per_s``: our env's ``step()`` calls per second without pixels, as returned by
  :func:`embodied.envs.make` (Gymnasium's wrappers included);
* ``raw_steps_per_s``: bare ``mujoco.mj_step(model, data, nstep=frame_skip)`` calls per second
  on the *same* compiled model with a fresh :class:`mujoco.MjData`, replaying exactly the
  states and controls that the env went through, so both do the same physics substeps with
  the same contacts;
* ``overhead`` = ``raw_steps_per_s / env_steps_per_s`` (1.0: the env costs nothing over physics);
* ``pixel_fps``: ``step()`` calls per second of the env made with ``pixels=64`` (each returns
  one 64x64 frame besides the physics step);
* ``raw_pixel_fps``: frames per second of a bare ``mujoco.Renderer(model, 64, 64)``
  (``update_scene(data, camera="overhead")`` + ``render()``) with the env's scene flags
  (shadows, reflections and skybox off), rendering the same states that the pixel env rendered;
* ``pixel_ratio`` = ``pixel_fps / raw_pixel_fps`` (the pixel env also steps physics, so it
  stays below 1);
* ``reacher_v5_steps_per_s``: Gymnasium's ``Reacher-v5`` ``step()`` calls per second, a peer
  measured once and repeated on every row.

Only the timed call is on the clock: actions are chosen, ``reset()`` runs, and the states
for the bare replays are recorded off the clock. Each quantity is the median over
``repeats`` windows of about ``seconds / repeats`` seconds of timed work; within a window,
short chunks of an env and of its bare baseline alternate, so machine noise hits both alike. Rates are in calls
(or frames) per second of wall-clock time; ratios are unitless.

Heavy modules (MuJoCo, Gymnasium, the env suite) are imported inside the functions.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover - typing only
    import gymnasium as gym
    import mujoco
    import numpy as np

Row = dict[str, "float | str"]

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # key, header, format
    ("embodiment", "embodiment", "s"),
    ("env_id", "env id", "s"),
    ("env_steps_per_s", "env steps/s", ",.0f"),
    ("raw_steps_per_s", "raw steps/s", ",.0f"),
    ("overhead", "overhead", ".2f"),
    ("pixel_fps", "pixel fps", ",.0f"),
    ("raw_pixel_fps", "raw pixel fps", ",.0f"),
    ("pixel_ratio", "pixel ratio", ".2f"),
    ("reacher_v5_steps_per_s", "Reacher-v5 steps/s", ",.0f"),
)
"""Columns of :func:`format_table`: row key, header and number format."""

PIXEL_SIZE_DEFAULT = 64
_MODEL_FIELDS = ("geom_contype", "geom_conaffinity", "geom_group", "geom_rgba")
"""Model arrays that ``TabletopEnv.reset`` rewrites per episode (shapes and colours)."""
_MIN_STEPS = 20
_MIN_FRAMES = 2
_CHUNKS = 8
"""Each timed window alternates this many env chunks with their bare replays."""


def push_zone_id(embodiment: str) -> str:
    """The registered push_zone env id of ``embodiment`` (``"arm2"`` -> ``"embodied/Arm2PushZone-v0"``)."""
    return f"embodied/{embodiment[:1].upper()}{embodiment[1:]}PushZone-v0"


@dataclass
class _Segment:
    """One stretch of an episode: its start state, the model's per-episode arrays and the controls."""

    state: np.ndarray
    model_fields: tuple[np.ndarray, ...]
    ctrl: list[np.ndarray] = field(default_factory=list)


@dataclass
class _Trace:
    """What a timed env window did: busy seconds in ``step()``, step count and the segments to replay."""

    busy_s: float
    steps: int
    segments: list[_Segment]


def _state_sig() -> int:
    import mujoco

    return int(mujoco.mjtState.mjSTATE_INTEGRATION)


def _snapshot(model: mujoco.MjModel, data: mujoco.MjData) -> _Segment:
    import mujoco
    import numpy as np

    sig = _state_sig()
    state = np.empty(mujoco.mj_stateSize(model, sig))
    mujoco.mj_getState(model, data, state, sig)
    return _Segment(state, tuple(getattr(model, f).copy() for f in _MODEL_FIELDS))


def _restore(model: mujoco.MjModel, data: mujoco.MjData, seg: _Segment) -> None:
    import mujoco

    for name, value in zip(_MODEL_FIELDS, seg.model_fields):
        getattr(model, name)[:] = value
    mujoco.mj_setState(model, data, seg.state, _state_sig())


def _make_policy(env: gym.Env, policy: str, rng: np.random.Generator) -> Callable[[], np.ndarray]:
    """A zero-argument action source: uniform random actions or the env's scripted expert."""
    import numpy as np

    space = env.action_space
    if policy == "random":
        low, high, dtype = space.low, space.high, space.dtype
        return lambda: rng.uniform(low, high).astype(dtype)
    if policy == "expert":
        base = env.unwrapped
        return lambda: np.asarray(base.expert_action(), dtype=space.dtype)
    raise ValueError(f"policy={policy!r} is not supported; use 'random' or 'expert'")


def _run_env(env: gym.Env, steps: int, act: Callable[[], np.ndarray]) -> _Trace:
    """Step ``env`` ``steps`` times, timing ``step()`` only; reset (untimed) when an episode ends."""
    base = env.unwrapped
    model, data = base.model, base.data
    segments = [_snapshot(model, data)]
    clock = time.perf_counter
    busy = 0.0
    for _ in range(steps):
        a = act()
        t0 = clock()
        _, _, terminated, truncated, _ = env.step(a)
        busy += clock() - t0
        segments[-1].ctrl.append(data.ctrl.copy())
        if terminated or truncated:
            env.reset()
            segments.append(_snapshot(model, data))
    return _Trace(busy, steps, segments)


def _replay(
    model: mujoco.MjModel,
    data: mujoco.MjData,
    trace: _Trace,
    frame_skip: int,
    renderer: mujoco.Renderer | None = None,
) -> float:
    """Replay ``trace`` with bare ``ctrl`` writes + ``mj_step(nstep=frame_skip)``; return busy seconds.

    Without ``renderer`` the physics is timed. With one, physics runs off the clock and only
    ``update_scene`` + ``render`` of each state the pixel env rendered is timed. The model
    fields that resets rewrite are put back afterwards.
    """
    import mujoco

    keep = _snapshot(model, data).model_fields
    clock, step = time.perf_counter, mujoco.mj_step
    busy = 0.0
    for seg in trace.segments:
        if not seg.ctrl:
            continue
        _restore(model, data, seg)
        ctrl = data.ctrl
        for c in seg.ctrl:
            t0 = clock()
            ctrl[:] = c
            step(model, data, nstep=frame_skip)
            if renderer is not None:
                t0 = clock()
                renderer.update_scene(data, camera="overhead")
                renderer.render()
            busy += clock() - t0
    for name, value in zip(_MODEL_FIELDS, keep):
        getattr(model, name)[:] = value
    return busy


def _calibrate(run: Callable[[int], float], window_s: float, minimum: int, probe_s: float = 0.1) -> int:
    """Steps that fill about ``window_s`` seconds of timed work.

    ``run(n)`` does ``n`` steps and returns their busy seconds; it is called with growing
    ``n`` until ``probe_s`` seconds of timed work give a stable rate.
    """
    n, steps, busy = minimum, 0, 0.0
    while busy < probe_s:
        busy += run(n)
        steps += n
        n *= 2
    return max(minimum, int(round(steps / busy * window_s)))


def _bench_embodiment(
    embodiment: str,
    seconds: float,
    repeats: int,
    pixel_size: int,
    policy: str,
    seed: int,
    progress: Callable[[str], None],
) -> Row:
    """One row of :func:`bench_envs` (without the Reacher-v5 column)."""
    import mujoco
    import numpy as np

    from embodied.envs import make
    from embodied.envs.scene import make_renderer

    env_id = push_zone_id(embodiment)
    window = seconds / repeats
    rng = np.random.default_rng(seed)

    env = make(env_id)
    px_env = make(env_id, pixels=pixel_size)
    raw_data = mujoco.MjData(env.unwrapped.model)
    px_raw_data = mujoco.MjData(px_env.unwrapped.model)
    renderer = make_renderer(px_env.unwrapped.model, pixel_size)
    try:
        fs, px_fs = env.unwrapped.frame_skip, px_env.unwrapped.frame_skip
        env.reset(seed=seed)
        px_env.reset(seed=seed + 1)
        act, px_act = _make_policy(env, policy, rng), _make_policy(px_env, policy, rng)

        # Warm-up (caches, the env checker's first calls, GL contexts, first frames), then calibrate.
        progress(f"{env_id}: warming up")
        for _ in range(2):
            t = _run_env(env, 50, act)
            _replay(env.unwrapped.model, raw_data, t, fs)
            pt = _run_env(px_env, 10, px_act)
            _replay(px_env.unwrapped.model, px_raw_data, pt, px_fs, renderer)
        n_env = _calibrate(lambda n: _run_env(env, n, act).busy_s, window / _CHUNKS, _MIN_STEPS)
        n_px = _calibrate(lambda n: _run_env(px_env, n, px_act).busy_s, window / _CHUNKS, _MIN_FRAMES)

        env_r: list[float] = []
        raw_r: list[float] = []
        px_r: list[float] = []
        rawpx_r: list[float] = []
        for k in range(repeats):
            progress(f"{env_id}: window {k + 1}/{repeats} ({_CHUNKS}x{n_env} steps, {_CHUNKS}x{n_px} frames)")
            busy = [0.0, 0.0, 0.0, 0.0]
            for _ in range(_CHUNKS):  # env and bare chunks alternate within each window
                t = _run_env(env, n_env, act)
                busy[0] += t.busy_s
                busy[1] += _replay(env.unwrapped.model, raw_data, t, fs)
                pt = _run_env(px_env, n_px, px_act)
                busy[2] += pt.busy_s
                busy[3] += _replay(px_env.unwrapped.model, px_raw_data, pt, px_fs, renderer)
            env_r.append(_CHUNKS * n_env / busy[0])
            raw_r.append(_CHUNKS * n_env / busy[1])
            px_r.append(_CHUNKS * n_px / busy[2])
            rawpx_r.append(_CHUNKS * n_px / busy[3])
    finally:
        renderer.close()
        env.close()
        px_env.close()

    env_sps, raw_sps = statistics.median(env_r), statistics.median(raw_r)
    px_fps, raw_px_fps = statistics.median(px_r), statistics.median(rawpx_r)
    return {
        "embodiment": embodiment,
        "env_id": env_id,
        "env_steps_per_s": env_sps,
        "raw_steps_per_s": raw_sps,
        "overhead": raw_sps / env_sps,
        "pixel_fps": px_fps,
        "raw_pixel_fps": raw_px_fps,
        "pixel_ratio": px_fps / raw_px_fps,
    }


def bench_reacher(seconds: float = 2.0, repeats: int = 5, seed: int = 0) -> float:
    """Gymnasium ``Reacher-v5`` ``step()`` calls per second (random actions, resets off the clock).

    The median over ``repeats`` windows of about ``seconds / repeats`` seconds of timed work;
    ``nan`` if the env cannot be made.
    """
    import numpy as np

    import gymnasium as gym

    env = gym.make("Reacher-v5")  # needs gymnasium's MuJoCo extra (imageio), a dependency of ours
    rng = np.random.default_rng(seed)
    space = env.action_space
    low, high, dtype = space.low, space.high, space.dtype
    clock = time.perf_counter

    def run(steps: int) -> float:
        busy = 0.0
        for _ in range(steps):
            a = rng.uniform(low, high).astype(dtype)
            t0 = clock()
            _, _, terminated, truncated, _ = env.step(a)
            busy += clock() - t0
            if terminated or truncated:
                env.reset()
        return busy

    try:
        env.reset(seed=seed)
        run(200)
        n = _calibrate(run, seconds / repeats, _MIN_STEPS)
        return statistics.median(n / run(n) for _ in range(repeats))
    finally:
        env.close()


def bench_envs(
    seconds: float = 2.0,
    repeats: int = 5,
    embodiments: Sequence[str] = ("point", "arm2", "arm3"),
    pixel_size: int = PIXEL_SIZE_DEFAULT,
    progress: Callable[[str], None] | None = None,
    *,
    policy: str = "random",
    seed: int = 0,
) -> list[dict[str, float | str]]:
    """Steps/s of each embodiment's push_zone env, bare MuJoCo on the same model, and Reacher-v5.

    Args:
        seconds: timed work (s) per measured quantity per embodiment, split into ``repeats``
            windows; untimed work (resets, recording, replay set-up) comes on top.
        repeats: number of timed windows; each reported rate is the median over them.
        embodiments: embodiment names (point, arm2, arm3); the env is their push_zone env.
        pixel_size: side (pixels) of the frames of the pixel env and of the bare renderer.
        progress: called with a short message as the benchmark advances (e.g. ``print``).
        policy: ``"random"`` (uniform actions) or ``"expert"`` (the scripted expert, its
            compute off the clock).
        seed: seed of the env resets and of the random actions.

    Returns:
        One dict per embodiment with ``embodiment`` and ``env_id`` (str);
        ``env_steps_per_s`` and ``raw_steps_per_s`` (step calls/s, each call advances the
        same ``frame_skip`` physics substeps; only ``step()`` resp. the ``ctrl`` write +
        ``mj_step`` is timed, ``reset()`` is excluded); ``overhead`` (unitless, the ratio of
        those medians); ``pixel_fps`` and ``raw_pixel_fps`` (frames/s: pixel env ``step()``
        calls, bare ``update_scene`` + ``render`` calls); ``pixel_ratio`` (unitless, the ratio
        of those medians); ``reacher_v5_steps_per_s`` (step calls/s, the same on every row,
        ``nan`` if Reacher-v5 cannot be made).
    """
    if seconds <= 0 or repeats < 1:
        raise ValueError(f"need seconds > 0 and repeats >= 1, got seconds={seconds}, repeats={repeats}")
    from embodied.envs import entry

    for name in embodiments:
        entry(push_zone_id(name))  # unknown embodiments fail before any timing
    say: Callable[[str], None] = progress or (lambda _msg: None)
    rows = [_bench_embodiment(name, seconds, repeats, pixel_size, policy, seed, say) for name in embodiments]
    say("Reacher-v5: timing")
    reacher = bench_reacher(seconds, repeats, seed)
    for row in rows:
        row["reacher_v5_steps_per_s"] = reacher
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of :func:`bench_envs` rows (rates in calls or frames per second)."""
    keys = [c for c in COLUMNS if any(c[0] in r for r in rows)] or list(COLUMNS)
    extra = [k for r in rows for k in r if k not in {c[0] for c in COLUMNS}]
    cols = keys + [(k, k, "") for k in dict.fromkeys(extra)]

    def cell(value: Any, fmt: str) -> str:
        if value is None:
            return "-"
        if isinstance(value, float) and value != value:
            return "n/a"
        try:
            return format(value, fmt)
        except (TypeError, ValueError):
            return str(value)

    body = [[cell(r.get(k), fmt) for k, _, fmt in cols] for r in rows]
    heads = [h for _, h, _ in cols]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    left = {i for i, (_, _, fmt) in enumerate(cols) if fmt == "s"}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(heads), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    return "\n".join(out)


__all__ = ["COLUMNS", "bench_envs", "bench_reacher", "format_table", "push_zone_id"]
