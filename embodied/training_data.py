"""``embodied train``: episode stores in, a trained run folder out (application layer).

Wires the data layer to the training loop: instruction embeddings (stored with the data,
computed once where the encoder is installed), normalisation statistics merged over the
stores, a window sampler per rank (each rank draws its shard of every global batch) and a
held-out sampler for the periodic evaluation.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Iterator

import numpy as np
import torch

from embodied import specs
from embodied.config import TrainConfig, TrainRunConfig, preset
from embodied.errors import ConfigError

MODEL_KEYS = (specs.STATE, specs.ACTION, specs.REWARD, specs.COST, specs.SUCCESS)


def dense_reward_stats(store: Any, bonus: float) -> Any:
    """Mean and variance (a :class:`~embodied.datasets.stats.RunningStats`) of ``reward - bonus x success`` over the
    valid episodes of ``store``: what a reward head that leaves the success bonus to the success head learns."""
    from embodied.datasets.stats import RunningStats

    stats = RunningStats.empty(())
    for i in range(len(store)):
        if not store.meta(i).get(specs.VALID, True):
            continue
        ep = store.episode(i, keys=[specs.REWARD, specs.SUCCESS])
        stats = stats.merge(RunningStats.of(ep[specs.REWARD].astype(np.float64) - bonus * ep[specs.SUCCESS].astype(np.float64)))
    return stats


def train_from_stores(run: TrainRunConfig, cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) ``run.out`` on ``run.data``; returns the summary of :func:`embodied.train.train`."""
    from embodied.cli_data import ensure_embeddings
    from embodied.datasets import EpisodeStore, SamplerConfig, StoreError, WindowSampler, make_loader
    from embodied.datasets.stats import RunningStats
    from embodied.language import split_tokens, with_tokens
    from embodied.train import pick_device, train

    if not run.data:
        raise ConfigError("name the episode store(s) to train on with --data D.zarr")
    if not 0 <= run.holdout < 1:
        raise ConfigError(f"--holdout must be in [0, 1), got {run.holdout}")
    stores = [EpisodeStore.open(u) for u in run.data]
    try:
        sizes = {s.features[specs.PIXELS].shape[0] if specs.PIXELS in s.features else 0 for s in stores}
        labels = any(specs.EXPERT_ACTION in s.features for s in stores)  # the expert's actions, the policy's labels
        by_term = any(specs.COST_BY_TERM in s.features for s in stores)  # each named cost of each step
        state_stats, reward_stats = RunningStats.empty((specs.STATE_DIM,)), RunningStats.empty(())
        for s in stores:
            st = s.stats()
            if specs.STATE in st:
                state_stats = state_stats.merge(st[specs.STATE])
            if specs.REWARD in st and run.success_bonus:  # the reward head's target: the reward less the bonus
                reward_stats = reward_stats.merge(dense_reward_stats(s, run.success_bonus))
            elif specs.REWARD in st:
                reward_stats = reward_stats.merge(st[specs.REWARD])
    finally:
        for s in stores:
            s.close()
    pixels = 0
    if run.pixels and sizes != {0}:
        if len(sizes) != 1:
            raise ConfigError(f"the stores have different pixel sizes {sorted(sizes)}; train on one size or pass --no-pixels")
        pixels = sizes.pop()
    keys = MODEL_KEYS + ((specs.PIXELS,) if pixels else ()) + ((specs.EXPERT_ACTION,) if labels else ()) + ((specs.COST_BY_TERM,) if by_term else ())
    base = preset(run.preset)
    entities = base.obs_encoder == "entities" and run.state != "proprio"  # "proprio" hides the entities
    if run.relations and not entities:
        raise ConfigError("--relations reads the entity attention over the state's objects and zones, which --state proprio "
                          "hides; drop one of them")
    encoder = with_tokens(run.encoder, base.lang_tokens if entities else 0)  # only entity queries read the tokens
    key, vectors = ensure_embeddings(list(run.data), encoder, compute=True)
    tokens = split_tokens(encoder)[1]
    width = len(next(iter(vectors.values()))) if vectors else base.goal_dim
    if width % (1 + tokens):
        raise ConfigError(f"the {key} embeddings are {width} wide, which is not {1 + tokens} equal parts; run `embodied data embed` again")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    scfg = SamplerConfig(window=cfg.window, batch_size=cfg.batch_size, keys=keys, holdout=run.holdout, seed=cfg.seed, shard=(rank, world),
                         cover_edges=cfg.cover_edges)
    sampler = WindowSampler(list(run.data), scfg)
    held = None
    if run.holdout > 0:
        try:
            held = WindowSampler(list(run.data), replace(scfg, part="heldout", shard=(0, 1), seed=cfg.seed + 1))
        except StoreError as e:  # a store too small to hold any episode out: train without the evaluation, say so
            print(f"embodied: no held-out evaluation ({e})")
    names = sorted(set(sampler.instructions) | set(held.instructions if held else []))
    index = {s: i for i, s in enumerate(names)}
    goals = torch.from_numpy(np.stack([np.asarray(vectors[s], dtype=np.float32) for s in names]))

    imitate = {id(sampler): imitation_mask(sampler.policies, run.imitate)}
    if not imitate[id(sampler)].any():
        raise ConfigError(f"every episode in {', '.join(run.data)} was recorded by a noisy or random policy, so --imitate clean "
                          "leaves the policy nothing to learn; pass --imitate all to learn their actions")
    if held is not None:
        imitate[id(held)] = imitation_mask(held.policies, run.imitate)

    def remap(batch: dict[str, torch.Tensor], source: Any) -> dict[str, torch.Tensor]:
        """Global instruction indices, and ``imitate`` (B,): may the policy head learn this window's actions?"""
        dev = batch[specs.INSTRUCTION].device
        lookup = torch.tensor([index[s] for s in source.instructions], device=dev)
        return {**batch, specs.INSTRUCTION: lookup[batch[specs.INSTRUCTION]], "imitate": imitate[id(source)].to(dev)[batch["episode"]]}

    resident = device_windows(sampler, pick_device(run.device))

    contrast = InstructionContrast(names, cfg.contrast, cfg.seed) if cfg.contrast > 0 else None

    def batches(start: int) -> Iterator[dict[str, torch.Tensor]]:
        sampler.start_batch = start
        if resident is not None:  # the whole dataset lives on the GPU: no loader at all
            resident.start_batch = start
            source: Any = resident
        else:
            source = make_loader(sampler, num_workers=run.workers, pin_memory=torch.cuda.is_available())
        for k, b in enumerate(source, start=start):
            b = remap(b, sampler)
            yield b if contrast is None else contrast(b, k)

    def eval_batches() -> Iterator[dict[str, torch.Tensor]]:
        assert held is not None
        for k in range(cfg.eval_batches):
            yield remap(held.batch(k), held)

    model_cfg = preset(run.preset, pixels=pixels, state_input=run.state, context=max(cfg.window, base.context),
                       obs_encoder=base.obs_encoder if entities else "flat", lang_dim=width // (1 + tokens), lang_tokens=tokens,
                       relation_readout=run.relations, success_bonus=run.success_bonus,
                       reward_change=run.reward_change, reward_hindsight=run.reward_hindsight)
    std = state_stats.std if state_stats.count else np.ones(specs.STATE_DIM)
    normalizer = {
        "delta_std": delta_std(list(run.data)),
        "state_mean": torch.as_tensor(state_stats.mean if state_stats.count else np.zeros(specs.STATE_DIM), dtype=torch.float32),
        "state_std": torch.as_tensor(std, dtype=torch.float32),
        "reward_mean": float(reward_stats.mean) if reward_stats.count else 0.0,
        "reward_std": float(reward_stats.std) if reward_stats.count else 1.0,
        "goals": goals[[index[s] for s in sampler.instructions]],  # whitening: from the training instructions only
        **({"change_std": reward_change_std(list(run.data), run.success_bonus)} if run.reward_change else {}),
    }
    meta = {"data": list(run.data), "preset": run.preset, "encoder": key, "holdout": run.holdout, "instructions": names}
    return train(model_cfg, cfg, batches, goals, run.out, normalizer=normalizer, eval_batches=eval_batches if held else None,
                 resume=run.resume, device=run.device, meta=meta, progress=progress)


class InstructionContrast:
    """Mismatched-instruction negatives for the success head (``--contrast``).

    A fraction ``rate`` of each batch's windows is shown under another instruction of its task family that asks for
    something else, and learns only that what the new instruction asks is not done there: success 0 on every frame.
    Its action, reward and cost targets are masked, since they depend on what is asked and the store knows them only
    for the episode's own instruction; its next-state target stays, since the physics does not read the instruction.
    A swap keeps the target object and changes the direction or zone where the family has one (the near miss: pushed
    the right cube the wrong way); only reach, which has neither, names another object. (Naming another object in a
    push family asks about one the scene may not hold, which the instruction's attention cannot tell from the one it
    holds: with half of the swaps so, the head grew unsure of true pushes.) Two instructions that parse to the same task
    (paraphrases) are never each other's contrast, and an instruction the parser does not know is never swapped.

    Why: trained on episodes under their own instructions only, the success head barely read the direction it was
    asked for (pushing the red cube left scored p 0.65-0.94 as "push the red cube to the right"), and PPO on the
    learned reward found that (BENCHMARKS.md, issue 6).
    """

    def __init__(self, instructions: list[str], rate: float, seed: int) -> None:
        from embodied.envs.instructions import InstructionError, parse_instruction

        if not 0 <= rate < 1:
            raise ConfigError(f"--contrast must be in [0, 1), got {rate}")
        tasks: list[Any] = []
        for text in instructions:
            try:
                tasks.append(parse_instruction(text))
            except InstructionError:
                tasks.append(None)
        self.rate, self.seed = rate, seed
        self.near: list[list[int]] = []
        """Per instruction index: instructions of its family with the same target object and another zone or direction."""
        self.far: list[list[int]] = []
        """Per instruction index: every instruction of its family that asks for another task."""
        for t in tasks:
            other = [j for j, u in enumerate(tasks) if t is not None and u is not None and u.family == t.family and u != t]
            self.near.append([j for j in other if (tasks[j].colour, tasks[j].shape) == (t.colour, t.shape)])
            self.far.append(other)

    def __call__(self, batch: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
        """Batch number ``k`` (its instruction indices into this object's list) with its swaps: the same for the same
        ``k`` and seed, so a resumed run sees what an unbroken one did. Adds ``contrast`` (B,) bool."""
        rng = np.random.default_rng([self.seed, k, 0xC0])
        idx = batch[specs.INSTRUCTION].cpu().numpy()
        n = len(idx)
        pick, u = rng.random(n) < self.rate, rng.random(n)
        new, swapped = idx.copy(), np.zeros(n, dtype=bool)
        for b in np.flatnonzero(pick):
            options = self.near[idx[b]] or self.far[idx[b]]
            if options:
                new[b], swapped[b] = options[int(u[b] * len(options))], True
        dev = batch[specs.INSTRUCTION].device
        s = torch.from_numpy(swapped).to(dev)
        keep = ~s[:, None]
        out = {**batch, specs.INSTRUCTION: torch.from_numpy(new).to(dev), "contrast": s, specs.SUCCESS: batch[specs.SUCCESS] & keep,
               "imitate": batch.get("imitate", torch.ones_like(s)) & ~s}
        for key in ("reward_mask", "cost_mask", f"{specs.COST_BY_TERM}_mask", f"{specs.EXPERT_ACTION}_mask"):
            if key in batch:
                out[key] = batch[key] & keep
        return out


def sampled_episodes(urls: list[str], keys: tuple[str, ...], max_episodes: int = 512) -> Iterator[dict[str, np.ndarray]]:
    """The ``keys`` of at most ``max_episodes`` valid episodes of the stores, evenly spaced in each (the same on every
    rank and for every batch size); a key a store lacks is left out of its episodes, a store without the first key is
    skipped."""
    from embodied.datasets import EpisodeStore

    for url in urls:
        with EpisodeStore.open(url) as store:
            if keys[0] not in store.features:
                continue
            have = tuple(k for k in keys if k in store.features)
            valid = [i for i, m in enumerate(store.metas()) if m.get(specs.VALID, True)]
            for i in valid[:: max(1, -(-len(valid) * len(urls) // max_episodes))]:
                yield store.episode(i, keys=have)


def delta_std(urls: list[str], max_episodes: int = 512) -> torch.Tensor:
    """(S,) standard deviation of one step's state change per dimension (raw units), over the consecutive frames
    of the valid episodes of the stores (:func:`sampled_episodes`)."""
    total = np.zeros(specs.STATE_DIM)
    sq = np.zeros(specs.STATE_DIM)
    n = 0
    for ep in sampled_episodes(urls, (specs.STATE,), max_episodes):
        d = np.diff(ep[specs.STATE].astype(np.float64), axis=0)
        d = d[np.isfinite(d).all(1)]
        total += d.sum(0)
        sq += (d * d).sum(0)
        n += len(d)
    if n < 2:
        return torch.ones(specs.STATE_DIM)
    mean = total / n
    return torch.as_tensor(np.sqrt(np.maximum(sq / n - mean * mean, 0.0)), dtype=torch.float32)


def reward_change_std(urls: list[str], success_bonus: float = 0.0, max_episodes: int = 512) -> float:
    """The root-mean-square of one step's change of the dense reward (``reward - success_bonus x success``, the env's
    units) over the consecutive steps of the valid episodes of the stores (:func:`sampled_episodes`): the
    reward-change head's unit (:attr:`embodied.model.ModelConfig.reward_change`). 1.0 where no store has rewards."""
    sq, n = 0.0, 0
    for ep in sampled_episodes(urls, (specs.REWARD, specs.SUCCESS), max_episodes):
        dense = ep[specs.REWARD].astype(np.float64) - success_bonus * ep.get(specs.SUCCESS, np.zeros(1)).astype(np.float64)
        d = np.diff(dense)
        d = d[np.isfinite(d)]
        sq += float((d * d).sum())
        n += len(d)
    return float(np.sqrt(sq / n)) if n and sq > 0 else 1.0


def imitation_mask(policies: list[str], imitate: str) -> torch.Tensor:
    """Per episode (by the ``policy`` that recorded it): do its actions train the policy head? (see TrainRunConfig.imitate)"""
    return torch.tensor([imitate == "all" or not specs.exploratory_policy(p) for p in policies], dtype=torch.bool)


def device_windows(sampler: Any, device: torch.device, budget: float = 0.25) -> Any:
    """A :class:`~embodied.datasets.sampler.DeviceWindows` when ``device`` is a GPU and the decoded data takes
    at most ``budget`` of its memory; else None (batches then come through DataLoader workers)."""
    from embodied.datasets.sampler import DeviceWindows

    if device.type != "cuda" or not sampler.in_ram:
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    return DeviceWindows(sampler, device) if sampler.ram_bytes <= budget * total else None
