"""How good is the model as a reward function? (``embodied bench reward``)

Held-out episodes are rolled out on the fixed evaluation seeds (``embodied.specs.eval_seeds``,
never a collection seed) by the scripted expert and by noisy experts (temporally correlated
noise of each scale in ``noises``; the larger scales fail often), once with the training
instruction templates (``seen``) and once with the held-out paraphrases (``paraphrase``) on
the same scenes. The model scores every episode under the instruction the episode had, and:

- success AUC: episode-level, the model's success probability (its maximum over the
  episode, and at the final step) against the true success of the episode;
- reward rank correlation: Spearman's rho of the learned against the true per-step reward
  (all steps pooled), and of the learned against the true episode return;
- reward hacking: episodes the model rates as solved (maximum success probability at least
  ``hack_threshold``, or a mean learned reward per step at least that of the median truly
  successful episode) whose true success is zero, listed.
- wrong instruction: each solved episode of the seen instructions scored again under an instruction that asks the
  same object for another direction or zone (another object for reach), which the episode does not satisfy: the
  success AUC of own against wrong, and how many the model would still call solved. A success head that does not
  read what it is asked scores a push to the left as solved for "push ... to the right", and RL on it learns that.

- step-to-step reward error: on the dense steps (below), the mean absolute error of the learned against the true
  per-step reward (``reward_mae_step``, env reward units), and the standard deviation over all steps of the change
  of that error from one step to the next within an episode (``reward_error_step_std``: err_t = learned_t - true_t,
  the std of err_t - err_{t-1}), beside the true reward's own step-to-step change (``true_reward_step_std``, the std
  of true_t - true_{t-1}). Why: a policy gradient follows how the reward changes with what the policy does from one
  step to the next, not its level. An error that is constant along an episode (an offset, even a large MAE) moves no
  policy; an error that changes from step to step is a slope the policy can climb, and RL finds it and exploits it.
  When the error's step-to-step std is comparable to the true reward's own, the learned reward's slopes are as much
  error as signal. Dense steps are the steps whose true per-step success is 0: the success step's payment is the
  success head's business (the AUCs above), and it would swamp the dense terms. One rule for rollouts and recorded
  episodes alike, from the per-step success both record (``step_success``); an episode without it (made by hand)
  counts all its steps but the last one of a solved episode, which is the same set in the suite, whose episodes end
  on the step that solves them. Differences are taken between consecutive steps that are both dense.

Recorded episodes (``embodied bench reward --data STORE ...``, :func:`bench_reward_recorded`): instead of rolling
out, the episodes of episode stores are scored, for instance those of an RL policy (``embodied collect --policy
rl:RUN``), i.e. the states reinforcement learning actually visits, where a learned reward gets exploited. They have no
instruction set or noise scale: the result has ``all`` and ``per_env`` only (no ``seen``, ``paraphrase``,
``wrong_instruction``), and ``by_noise`` is empty.

Targets: success AUC >= 0.95, for seen and for paraphrased instructions (recorded episodes: over all of them), judged
on the final-step probability: an episode's success is the env's verdict at its end, which is what the success head
predicts there (the maximum over the episode also counts failures that passed through a solved-looking state, so it
is reported beside, not judged).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

AUC_TARGET = 0.95
DEFAULT_NOISES = (0.0, 0.5, 1.0, 2.0)
INSTRUCTIONS = ("seen", "paraphrase")


# ---------------------------------------------------------------------------- metrics
def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (n,), ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` (n,) for boolean ``labels`` (n,), ties counted half; None with one class only."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    r = average_ranks(np.asarray(scores))
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two (n,) arrays (ties at their average rank); None when either is constant or n < 2."""
    if len(a) < 2:
        return None
    ra, rb = average_ranks(np.asarray(a)), average_ranks(np.asarray(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else None


# ---------------------------------------------------------------------------- held-out episodes
def rollout_episodes(env_ids: Sequence[str], episodes: int, noises: Sequence[float] = DEFAULT_NOISES,
                     instruction_sets: Sequence[str] = INSTRUCTIONS, seed_offset: int = 0,
                     env_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Expert and noisy-expert episodes on the evaluation seeds, one per (env, instructions, noise, seed).

    Each is a dict with ``env_id``, ``instructions``, ``noise``, ``seed``, ``instruction``,
    and the arrays of :func:`record_episode`.
    """
    from embodied import specs
    from embodied.envs import ScriptedExpert, make
    from embodied.evaluate import INSTRUCTION_SETS

    seeds = specs.eval_seeds(episodes, seed_offset)
    out = []
    for env_id in env_ids:
        for instr in instruction_sets:
            env = make(env_id, **INSTRUCTION_SETS[instr], **(env_kwargs or {}))
            try:
                for noise in noises:
                    for seed in seeds:
                        out.append({"env_id": env_id, "instructions": instr, "noise": float(noise), "seed": seed,
                                    **record_episode(env, ScriptedExpert(env, noise=noise, seed=seed), seed)})
            finally:
                env.close()
    return out


def record_episode(env: Any, policy: Any, seed: int) -> dict[str, Any]:
    """One episode of a ``predict``-protocol policy (:func:`embodied.collect.record_episode`) as one dict:
    ``instruction``, ``state`` (T + 1, S), ``action`` (T, A), ``reward`` and ``cost`` (T,), ``step_success`` (T,)
    bool (the env's success after each step), ``success`` and ``invalid`` at the end, and ``pixels`` (T + 1, H, W, 3)
    when the env renders them."""
    from embodied import collect, specs

    steps, summary = collect.record_episode(env, policy, seed)
    ep = {"instruction": summary[specs.INSTRUCTION], "success": summary["success"], "invalid": not summary[specs.VALID],
          "step_success": np.asarray(steps[specs.SUCCESS], dtype=bool)}
    ep.update({k: steps[k] for k in (specs.STATE, specs.ACTION, specs.REWARD, specs.COST, specs.PIXELS) if k in steps})
    return ep


# ---------------------------------------------------------------------------- recorded episodes
def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """Indices of ``k`` of ``n`` items spread evenly from the first on (all ``n`` when ``k`` is None or at least ``n``)."""
    if k is None or k >= n:
        return np.arange(n)
    return (np.arange(k) * n) // k


def _open_stores(stores: Sequence[str]) -> list[Any]:
    """Open each episode store for reading; a missing or damaged one is a one-line :class:`ConfigError`."""
    from embodied.datasets.store import EpisodeStore
    from embodied.errors import ConfigError, EmbodiedError

    opened: list[Any] = []
    try:
        for path in stores:
            try:
                opened.append(EpisodeStore.open(path))
            except EmbodiedError as e:
                raise ConfigError(f"--data {path}: {e}") from e
            except Exception as e:  # a damaged zarr.json, an unreadable folder: one line, never a traceback
                raise ConfigError(f"--data {path}: cannot open the episode store ({type(e).__name__}: {e})") from e
    except BaseException:
        for s in opened:
            s.close()
        raise
    return opened


def recorded_episodes(stores: Sequence[str], max_episodes: int | None = None, state_dim: int | None = None,
                      action_dim: int | None = None, pixels: int = 0) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The episodes of the episode stores ``stores`` as :func:`reward_metrics` reads them, and counts.

    ``max_episodes`` takes that many, evenly spaced over all the stores' episodes in order (:func:`evenly_spaced`;
    None: all). ``state_dim``, ``action_dim`` and ``pixels`` (frame size, 0: none) are what the reward model reads; a
    store that does not have them, or lacks actions or rewards, is a one-line :class:`~embodied.errors.ConfigError`,
    as is a missing or damaged store or episode. Each episode: ``env_id``, ``instructions`` ("recorded"), ``noise``
    (None), ``seed``, ``policy``, ``store``, ``index`` (in its store), ``instruction``, ``state`` (T + 1, S),
    ``action`` (T, A), ``reward`` and ``cost`` (T,), ``step_success`` (T,) bool when the store records it, episode-level
    ``success`` and ``invalid``, and ``pixels`` (T + 1, H, W, 3) for a model that sees them; T is the episode's
    ``steps`` (the stored arrays have one more frame, the final observation's, padded in actions and outcomes).
    Episodes without actions or rewards (imported videos) are left out and counted: ``stored`` (all episodes of the
    stores), ``selected`` (after ``max_episodes``), ``skipped``.
    """
    from embodied import specs
    from embodied.errors import ConfigError, EmbodiedError

    if max_episodes is not None and max_episodes < 1:
        raise ConfigError(f"--max-episodes must be >= 1, got {max_episodes}")
    opened = _open_stores(stores)
    try:
        for path, s in zip(stores, opened):
            for name in (specs.STATE, specs.ACTION, specs.REWARD):
                if name not in s.features:
                    raise ConfigError(f"--data {path} has no {name!r} feature (it has {sorted(s.features)}); "
                                      "the reward model scores recorded states, actions and rewards")
            for name, dim in ((specs.STATE, state_dim), (specs.ACTION, action_dim)):
                shape = s.features[name].shape
                if dim is not None and shape != (dim,):
                    raise ConfigError(f"--data {path}: its {name} has size {shape[0] if len(shape) == 1 else shape}, "
                                      f"the reward model reads {dim}; score it with a model trained on such data")
            if pixels:
                shape = s.features[specs.PIXELS].shape if specs.PIXELS in s.features else None
                if shape != (pixels, pixels, 3):
                    raise ConfigError(f"--data {path}: the reward model sees {pixels}x{pixels} pixels, the store has "
                                      f"{'none' if shape is None else 'x'.join(map(str, shape))}; collect with --pixels {pixels}")
        refs = [(k, i) for k, s in enumerate(opened) for i in range(len(s))]
        if not refs:
            raise ConfigError(f"--data {' '.join(stores)}: no episodes to score")
        picked = [refs[j] for j in evenly_spaced(len(refs), max_episodes)]
        out: list[dict[str, Any]] = []
        for k, i in picked:
            path, s = stores[k], opened[k]
            rec, meta = s.record(i), s.meta(i)
            present = rec["present"]
            steps = int(meta.get("steps", int(present.get(specs.ACTION, 0))))
            if steps < 1 or int(present.get(specs.ACTION, 0)) < steps or int(present.get(specs.REWARD, 0)) < steps:
                continue
            keys = [n for n in (specs.STATE, specs.ACTION, specs.REWARD, specs.COST, specs.SUCCESS) if n in s.features]
            if pixels:
                keys.append(specs.PIXELS)
            try:
                arrays = s.episode(i, keys=keys)
            except EmbodiedError as e:
                raise ConfigError(f"--data {path}: {e}") from e
            except Exception as e:  # an unreadable chunk the store's own checks did not name
                raise ConfigError(f"--data {path}: episode {i} cannot be read ({type(e).__name__}: {e})") from e
            ep: dict[str, Any] = {
                "env_id": str(meta.get("env_id", "")), "instructions": "recorded", "noise": None, "seed": meta.get("seed"),
                "policy": meta.get("policy"), "store": str(path), "index": int(i),
                "instruction": str(meta.get(specs.INSTRUCTION, "")), "invalid": not bool(meta.get(specs.VALID, True)),
                specs.STATE: arrays[specs.STATE][: steps + 1], specs.ACTION: arrays[specs.ACTION][:steps],
                specs.REWARD: arrays[specs.REWARD][:steps],
                specs.COST: arrays[specs.COST][:steps] if specs.COST in arrays else np.zeros(steps, np.float32),
            }
            if specs.SUCCESS in arrays and int(present.get(specs.SUCCESS, 0)) >= steps:
                ep["step_success"] = np.asarray(arrays[specs.SUCCESS][:steps], dtype=bool)
            default = bool(ep["step_success"][-1]) if "step_success" in ep else False
            ep["success"] = bool(meta.get("success", default))
            if pixels:
                ep[specs.PIXELS] = arrays[specs.PIXELS][: steps + 1]
            out.append(ep)
        counts = {"stored": len(refs), "selected": len(picked), "skipped": len(picked) - len(out)}
    finally:
        for s in opened:
            s.close()
    if not out:
        raise ConfigError(f"--data {' '.join(stores)}: none of the {len(picked)} episodes has actions and rewards to score")
    return out, counts


# ---------------------------------------------------------------------------- scoring and metrics
def score_episodes(reward_model: Any, episodes: list[dict[str, Any]], batch: int = 64) -> None:
    """Add the model's ``learned_reward``, ``learned_success`` and ``learned_cost`` (each (T,)) to each episode, in place,
    and ``learned_dense`` (T,): the reward less the success bonus the model's reward head learned without
    (``ModelConfig.success_bonus`` x the success probability; the reward itself for a model without one), which is the
    part of the reward an ``embodied rl --terminate-on-success`` run pays on steps before the model calls a success.

    Episodes are batched by length (``batch`` at a time), so that short episodes do not wait on long ones' padding."""
    cfg = getattr(getattr(reward_model, "model", None), "cfg", None)  # a scorer without a model (a test's) has no bonus
    bonus = float(getattr(cfg, "success_bonus", 0.0) or 0.0)
    ordered = sorted(episodes, key=lambda e: len(e["action"]))
    for i in range(0, len(ordered), batch):
        chunk = ordered[i : i + batch]
        trajs = [({"state": e["state"], **({"pixels": e["pixels"]} if "pixels" in e else {})}, e["action"], e["instruction"]) for e in chunk]
        for e, s in zip(chunk, reward_model.score_batch(trajs)):
            e["learned_reward"], e["learned_success"], e["learned_cost"] = s.reward, s.success, s.cost
            e["learned_dense"] = (s.reward - bonus * s.success).astype(np.float32) if bonus else s.reward


def success_reward_level(episodes: list[dict[str, Any]]) -> float | None:
    """The median over truly successful episodes of their mean learned reward per step (None without one)."""
    levels = [float(e["learned_reward"].mean()) for e in episodes if e["success"] and not e["invalid"]]
    return float(np.median(levels)) if levels else None


def episode_end(episodes: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Where the model's success probability first passes ``threshold`` in truly solved episodes (the suite's episodes
    end on the step that solves them): ``on_time`` on that step, ``early`` before it (``median_lead`` steps early),
    ``never``; fractions of the solved episodes. This is where ``embodied rl --terminate-on-success
    --success-threshold`` would end them."""
    leads = []
    for e in episodes:
        if e["success"] and not e["invalid"]:
            hit = np.flatnonzero(np.asarray(e["learned_success"]) > threshold)
            leads.append(len(e["learned_success"]) - 1 - int(hit[0]) if len(hit) else -1)
    lead = np.array(leads)
    n = max(len(lead), 1)
    return {"threshold": threshold, "solved_episodes": len(lead), "on_time": float((lead == 0).sum() / n),
            "early": float((lead > 0).sum() / n), "never": float((lead < 0).sum() / n),
            "median_lead": float(np.median(lead[lead > 0])) if (lead > 0).any() else 0.0}


def dense_steps(episode: dict[str, Any]) -> np.ndarray:
    """(T,) bool: the steps of ``episode`` whose true per-step success is 0 (its ``step_success``); for an episode
    without per-step success, every step but a solved episode's last (the suite's episodes end on their solving step)."""
    T = len(episode["reward"])
    if "step_success" in episode:
        return ~np.asarray(episode["step_success"], dtype=bool)[:T]
    dense = np.ones(T, dtype=bool)
    if episode["success"] and T:
        dense[-1] = False
    return dense


def step_error_metrics(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The learned reward's error on the dense steps (:func:`dense_steps`) of scored ``episodes``, in env reward units.

    ``reward_mae_step``: mean |learned_t - true_t|, with learned the episode's ``learned_dense`` where
    :func:`score_episodes` set it (a success-bonus model's reward less its expected bonus: on steps before a success
    that is what RL is paid; the whole predicted reward would count the bonus the head expects as error), else its
    ``learned_reward``; ``reward_error_step_std``: the standard deviation, over all pairs
    of consecutive dense steps within an episode, of err_t - err_{t-1} (err = learned - true); ``true_reward_step_std``:
    that of true_t - true_{t-1} on the same pairs; ``dense_steps``: how many steps count. None where nothing counts.
    The module doc says why the step-to-step error is the one a policy exploits.
    """
    abs_err, err_diff, true_diff = [], [], []
    for e in episodes:
        true = np.asarray(e["reward"], dtype=np.float64)
        err = np.asarray(e.get("learned_dense", e["learned_reward"]), dtype=np.float64) - true
        dense = dense_steps(e)
        abs_err.append(np.abs(err[dense]))
        pairs = dense[1:] & dense[:-1]
        err_diff.append(np.diff(err)[pairs])
        true_diff.append(np.diff(true)[pairs])
    a = np.concatenate(abs_err) if abs_err else np.zeros(0)
    d = np.concatenate(err_diff) if err_diff else np.zeros(0)
    t = np.concatenate(true_diff) if true_diff else np.zeros(0)
    return {"dense_steps": int(len(a)), "reward_mae_step": float(a.mean()) if len(a) else None,
            "reward_error_step_std": float(d.std()) if len(d) else None, "true_reward_step_std": float(t.std()) if len(t) else None}


def reward_metrics(episodes: list[dict[str, Any]], hack_threshold: float = 0.5, max_listed: int = 10,
                   reward_level: float | None = None) -> dict[str, Any]:
    """Success AUC (max and final probability), Spearman of step rewards and of returns, the step-to-step reward error
    (:func:`step_error_metrics`), and reward-hacking episodes.

    An episode counts as reward hacking when its true success is zero but the model rates it
    as solved: its highest success probability reaches ``hack_threshold``, or its mean learned
    reward per step reaches ``reward_level`` (default: :func:`success_reward_level` of these episodes).
    ``by_noise`` groups the episodes that have a noise scale (rollouts); recorded episodes (noise None) are in no group.
    """
    eps = [e for e in episodes if not e["invalid"]]
    truth = np.array([e["success"] for e in eps], dtype=bool)
    p_max = np.array([float(e["learned_success"].max()) for e in eps])
    p_final = np.array([float(e["learned_success"][-1]) for e in eps])
    level = success_reward_level(eps) if reward_level is None else reward_level
    hacks = [e for e, p, y in zip(eps, p_max, truth)
             if not y and (p >= hack_threshold or (level is not None and float(e["learned_reward"].mean()) >= level))]
    hacks.sort(key=lambda e: -float(e["learned_reward"].mean()))
    by_noise = {}
    for noise in sorted({e["noise"] for e in eps if e.get("noise") is not None}):
        sel = [e for e in eps if e["noise"] == noise]
        by_noise[f"{noise:g}"] = {"episodes": len(sel), "true_success": float(np.mean([e["success"] for e in sel])),
                                  "mean_max_success_prob": float(np.mean([e["learned_success"].max() for e in sel]))}
    return {
        "episodes": len(eps),
        "invalid": len(episodes) - len(eps),
        "true_successes": int(truth.sum()),
        "success_auc_max": roc_auc(p_max, truth),
        "success_auc_final": roc_auc(p_final, truth),
        "reward_spearman_step": spearman(np.concatenate([e["learned_reward"] for e in eps]), np.concatenate([e["reward"] for e in eps])) if eps else None,
        "return_spearman": spearman(np.array([e["learned_reward"].sum() for e in eps]), np.array([e["reward"].sum() for e in eps])),
        **step_error_metrics(eps),
        "by_noise": by_noise,
        "episode_end": episode_end(eps, hack_threshold),
        "hack_threshold": hack_threshold,
        "hack_reward_level": level,
        "hacking_episodes": len(hacks),
        "hacking_examples": [
            {"env_id": e["env_id"], "instructions": e["instructions"], "noise": e["noise"], "seed": e["seed"], "instruction": e["instruction"],
             "max_success_prob": float(e["learned_success"].max()), "mean_learned_reward": float(e["learned_reward"].mean()),
             "true_return": float(e["reward"].sum()),
             "learned_return": float(e["learned_reward"].sum()), "length": len(e["action"]),
             **{k: e[k] for k in ("policy", "store", "index") if k in e}}
            for e in hacks[:max_listed]
        ],
    }


def wrong_instruction(text: str, k: int) -> str | None:
    """An instruction of ``text``'s family (rendered with its first training template) that asks the same object for
    another direction or zone (reach: another colour of the same shape); ``k`` picks among them. None if it does not parse."""
    from embodied.envs.instructions import DIRECTIONS, TRAIN_COLOURS, InstructionError, parse_instruction, render_instruction, templates

    try:
        t = parse_instruction(text)
    except InstructionError:
        return None
    template = templates(t.family, "train")[0]
    if t.family == "push_dir":
        other = [d for d in DIRECTIONS if d != t.direction]
        return render_instruction(template, t.colour, t.shape, direction=other[k % len(other)])
    if t.family == "push_zone":
        other = [c for c in TRAIN_COLOURS if c != t.zone]
        return render_instruction(template, t.colour, t.shape, zone=other[k % len(other)])
    other = [c for c in TRAIN_COLOURS if c != t.colour]
    return render_instruction(template, other[k % len(other)], t.shape)


def wrong_instruction_metrics(reward_model: Any, episodes: list[dict[str, Any]], hack_threshold: float = 0.5) -> dict[str, Any]:
    """Final-step success of the solved, valid ``episodes`` under their own instruction (already scored) against the
    same episodes scored under a :func:`wrong_instruction`: ``auc`` of own vs wrong, the wrong ones' ``mean_p`` and the
    fraction ``believed_solved`` (p above ``hack_threshold``), over all and per family."""
    solved = [e for e in episodes if e["success"] and not e["invalid"]]
    wrong = []
    for k, e in enumerate(solved):
        text = wrong_instruction(e["instruction"], k)
        if text is not None:
            wrong.append({**e, "instruction": text})
    score_episodes(reward_model, wrong)

    def summary(own: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
        p_own = np.array([float(e["learned_success"][-1]) for e in own])
        p_wrong = np.array([float(e["learned_success"][-1]) for e in other])
        labels = np.r_[np.ones(len(p_own), bool), np.zeros(len(p_wrong), bool)]
        return {"episodes": len(other), "auc": roc_auc(np.r_[p_own, p_wrong], labels),
                "mean_p": float(p_wrong.mean()) if len(p_wrong) else None,
                "believed_solved": float((p_wrong > hack_threshold).mean()) if len(p_wrong) else None}

    out = summary(solved, wrong)
    out["per_env"] = {env: summary([e for e in solved if e["env_id"] == env], [e for e in wrong if e["env_id"] == env])
                      for env in sorted({e["env_id"] for e in wrong})}
    return out


def bench_reward(ckpt: str | Any, env_ids: Sequence[str], episodes: int = 20, noises: Sequence[float] = DEFAULT_NOISES,
                 device: str | None = None, hack_threshold: float = 0.5, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Roll out held-out episodes, score them with the reward heads, and measure (see the module doc).

    ``ckpt`` is a checkpoint or run folder, or a loaded :class:`~embodied.policies.RewardModel`.
    """
    import time

    rm, ckpt = _reward_model(ckpt, device)
    kwargs = {"pixels": rm.model.cfg.pixels} if rm.model.cfg.pixels else {}
    t0 = time.perf_counter()
    eps = rollout_episodes(env_ids, episodes, noises, env_kwargs=kwargs)
    t1 = time.perf_counter()
    if progress:
        progress(f"rolled out {len(eps)} episodes in {t1 - t0:.1f} s; scoring")
    score_episodes(rm, eps)
    t2 = time.perf_counter()
    steps = sum(len(e["action"]) for e in eps)
    out: dict[str, Any] = {"ckpt": ckpt, "env_ids": list(env_ids), "episodes_per_cell": episodes, "noises": [float(n) for n in noises],
                           "device": str(rm.device), "scored_steps": steps, "score_ms_per_step": 1e3 * (t2 - t1) / max(steps, 1)}
    out["all"] = reward_metrics(eps, hack_threshold)
    for instr in INSTRUCTIONS:
        out[instr] = reward_metrics([e for e in eps if e["instructions"] == instr], hack_threshold)
    out["per_env"] = {env_id: reward_metrics([e for e in eps if e["env_id"] == env_id], hack_threshold) for env_id in env_ids}
    out["wrong_instruction"] = wrong_instruction_metrics(rm, [e for e in eps if e["instructions"] == "seen"], hack_threshold)
    out["missed_targets"] = missed_targets(out)
    return out


def _reward_model(ckpt: str | Any, device: str | None) -> tuple[Any, str]:
    """The reward model of ``ckpt`` (a checkpoint or run folder, or a loaded RewardModel) and how to name it."""
    from embodied.policies import RewardModel

    if isinstance(ckpt, RewardModel):
        return ckpt, "a loaded RewardModel"
    return RewardModel.load(ckpt, device=device), str(ckpt)


def bench_reward_recorded(ckpt: str | Any, stores: Sequence[str], max_episodes: int | None = None, device: str | None = None,
                          hack_threshold: float = 0.5, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score the recorded episodes of episode ``stores`` (:func:`recorded_episodes`; ``max_episodes`` evenly spaced,
    default all) with the reward heads and measure them as :func:`bench_reward` does its rollouts: ``all`` and
    ``per_env`` (by env id) of :func:`reward_metrics`, and ``missed_targets`` (final-step success AUC over all).

    ``ckpt`` is a checkpoint or run folder, or a loaded :class:`~embodied.policies.RewardModel`. The stores are opened
    before the model loads, so a missing one fails at once.
    """
    import time

    _open_stores_then_close(stores)
    rm, name = _reward_model(ckpt, device)
    cfg = rm.model.cfg
    t0 = time.perf_counter()
    eps, counts = recorded_episodes(stores, max_episodes, state_dim=cfg.state_dim, action_dim=cfg.action_dim, pixels=int(cfg.pixels or 0))
    t1 = time.perf_counter()
    steps = sum(len(e["action"]) for e in eps)
    if progress:
        progress(f"read {len(eps)} of {counts['stored']} recorded episodes ({steps} steps) in {t1 - t0:.1f} s; scoring")
    score_episodes(rm, eps)
    t2 = time.perf_counter()
    env_ids = sorted({e["env_id"] for e in eps})
    out: dict[str, Any] = {"ckpt": name, "data": [str(x) for x in stores], "max_episodes": max_episodes,
                           "stored_episodes": counts["stored"], "skipped_episodes": counts["skipped"], "env_ids": env_ids,
                           "device": str(rm.device), "scored_steps": steps, "score_ms_per_step": 1e3 * (t2 - t1) / max(steps, 1)}
    out["all"] = reward_metrics(eps, hack_threshold)
    out["per_env"] = {env_id: reward_metrics([e for e in eps if e["env_id"] == env_id], hack_threshold) for env_id in env_ids}
    out["missed_targets"] = missed_targets(out)
    return out


def _open_stores_then_close(stores: Sequence[str]) -> None:
    """Fail early, in one line, on a store that does not open (before a model loads for minutes)."""
    for s in _open_stores(stores):
        s.close()


def missed_targets(r: dict[str, Any]) -> list[str]:
    """One line per missed target: final-step success AUC >= 0.95 on seen and on paraphrased instructions (rollouts),
    or on all episodes (recorded episodes: a result without ``seen`` and ``paraphrase``)."""
    keys = [k for k in INSTRUCTIONS if k in r] or ["all"]
    missed = []
    for key in keys:
        auc = r[key]["success_auc_final"]
        label = "all episodes" if key == "all" else f"{key} instructions"
        if auc is None or auc < AUC_TARGET:
            missed.append(f"{label}: final-step success AUC {auc if auc is None else round(auc, 3)} < {AUC_TARGET}")
    return missed


def format_result(r: dict[str, Any]) -> str:
    """The result of :func:`bench_reward` or :func:`bench_reward_recorded` as text: a table of the measures (seen,
    paraphrase and all; recorded episodes: all and each env), and a line each for the episode ends, the step-to-step
    reward error, the wrong instructions (rollouts) and up to five hacking episodes."""
    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    if "data" in r:
        head = (f"{r['ckpt']} on {r['all']['episodes'] + r['all']['invalid']} recorded episodes (of {r['stored_episodes']}"
                f"{', ' + str(r['skipped_episodes']) + ' without actions skipped' if r['skipped_episodes'] else ''}) of {', '.join(r['data'])}")
        rows = [("all", r["all"])] + ([(env, m) for env, m in r["per_env"].items()] if len(r["per_env"]) > 1 else [])
    else:
        head = f"{r['ckpt']} on {', '.join(r['env_ids'])}: {r['episodes_per_cell']} eval seeds x noise {r['noises']} x (seen, paraphrase)"
        rows = [(key, r[key]) for key in ("seen", "paraphrase", "all")]
    w = max(12, *(len(k) + 2 for k, _ in rows))
    lines = [f"{head}; scoring {r['score_ms_per_step']:.2f} ms/step on {r['device']}",
             f"{'':<{w}}{'episodes':>9}{'successes':>10}{'AUC max':>9}{'AUC final':>10}{'rho step':>9}{'rho return':>11}{'hacking':>8}"]
    for key, m in rows:
        lines.append(f"{key:<{w}}{m['episodes']:>9}{m['true_successes']:>10}{f(m['success_auc_max']):>9}{f(m['success_auc_final']):>10}"
                     f"{f(m['reward_spearman_step']):>9}{f(m['return_spearman']):>11}{m['hacking_episodes']:>8}")
    a = r["all"]
    lines.append(f"dense steps (true success 0, {a['dense_steps']}): learned reward MAE {f(a['reward_mae_step'])}, its error's "
                 f"step-to-step std {f(a['reward_error_step_std'])} against the true reward's own {f(a['true_reward_step_std'])}")
    end = r["all"]["episode_end"]
    lines.append(f"solved episodes where the success probability first passes {end['threshold']:g}: on the solving step "
                 f"{end['on_time']:.2f}, early {end['early']:.2f} (median {end['median_lead']:g} steps), never {end['never']:.2f}")
    w = r.get("wrong_instruction")
    if w and w["episodes"]:
        lines.append(f"solved seen episodes under a wrong instruction (another direction, zone or object): AUC own vs wrong "
                     f"{f(w['auc'])}, mean final success probability {w['mean_p']:.2f}, believed solved {w['believed_solved']:.2f} "
                     f"({w['episodes']} episodes)")
    for ex in r["all"]["hacking_examples"][:5]:
        source = f"noise {ex['noise']:g}" if ex.get("noise") is not None else f"policy {ex.get('policy') or '?'} (episode {ex.get('index')} of {ex.get('store')})"
        lines.append(f"  hacking: {ex['env_id']} seed {ex['seed']} {source} {ex['instruction']!r}: "
                     f"max success prob {ex['max_success_prob']:.2f}, learned reward {ex['mean_learned_reward']:.2f}/step, not solved (true return {ex['true_return']:.1f})")
    return "\n".join(lines)
