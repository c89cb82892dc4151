"""The foundation model as a reward function: ``score`` and a learned-reward gymnasium wrapper.

The model's outcome heads read the hidden state at each action token ``a_t`` and predict
what that action earns: the reward of the step (regressed in normalised units, returned in
the env's units), the probability that the task is solved after it, and the probability
that the step costs something (the safety costs are per-step indicators, so this is also
the expected cost of an indicator constraint).

:class:`RewardModel` scores whole trajectories (:meth:`RewardModel.score`) or one step at a
time (:meth:`RewardModel.start` / :meth:`RewardModel.step`), both through the same
key/value-cached recurrence the policy uses: per step, the action's token, then the next
observation's. At most ``context`` timesteps stay in the cache, so long episodes cost the
same per step as short ones and a trajectory scored at once gets exactly the numbers its
steps got online.

:class:`LearnedReward` is a gymnasium wrapper that replaces the env's reward by that score
for one instruction; the env's own reward stays in ``info["true_reward"]`` beside its
reward terms and ``is_success``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch

from embodied import specs
from embodied.errors import ConfigError
from embodied.model import KVCache, TrajectoryModel

LEARNED_SUCCESS = "learned_success"
"""``info`` key of :class:`LearnedReward`: the model's probability that the task is solved after this step."""
LEARNED_COST = "learned_cost"
"""``info`` key of :class:`LearnedReward`: the model's probability that this step costs something."""
TRUE_REWARD = "true_reward"
"""``info`` key of :class:`LearnedReward`: the env's own reward of this step."""


@dataclass(frozen=True)
class Score:
    """The model's verdict on each step of one trajectory of T actions."""

    reward: np.ndarray
    """(T,) float32 predicted reward of each step, in the env's reward units."""
    success: np.ndarray
    """(T,) float32 probability that the task is solved after action t."""
    cost: np.ndarray
    """(T,) float32 probability that step t costs something (the expected cost of an indicator constraint)."""


@dataclass
class RewardContext:
    """The running state of B trajectories scored in lockstep: the key/value cache and the next timestep."""

    cache: KVCache
    t: int
    batch: int
    shared: tuple[KVCache, int] | None = None
    """Set by :meth:`RewardModel.step_each`: the batched cache this one-trajectory context is a row of, and the row
    (``cache`` is a view of it); the next call reuses it instead of stacking the rows again."""
    dense: torch.Tensor | None = None
    """(B,) the dense reward each trajectory's last step was given (None before its first), kept for a reward-change
    model (``ModelConfig.reward_change``), which fuses the next step's predicted change onto it."""


class RewardModel:
    """Score trajectories with a :class:`~embodied.model.TrajectoryModel`'s reward, success and cost heads."""

    def __init__(self, model: TrajectoryModel, encode: Any, device: str | torch.device | None = None) -> None:
        """``encode`` maps a list of instructions to (N, goal_dim) embeddings (the encoder the model trained with)."""
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.encode = encode
        self._goals: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = None, encoder: str | None = None) -> "RewardModel":
        """From a checkpoint or run folder, like :meth:`~embodied.policies.FoundationPolicy.load` (same weights, same encoder)."""
        from .foundation import FoundationPolicy

        policy = FoundationPolicy.load(path, device=device, encoder=encoder)
        return cls(policy.model, policy.encode, device=policy.device)

    def goal(self, instructions: Sequence[str]) -> torch.Tensor:
        """(B, goal_dim) embeddings of ``instructions``, each encoded once per model."""
        missing = [s for s in dict.fromkeys(instructions) if s not in self._goals]
        if missing:
            vecs = np.asarray(self.encode(missing), dtype=np.float32)
            for s, v in zip(missing, vecs):
                self._goals[s] = torch.as_tensor(v, device=self.device)
        return torch.stack([self._goals[s] for s in instructions])

    # ------------------------------------------------------------------ one step at a time
    @torch.inference_mode()
    def start(self, instructions: Sequence[str], state: np.ndarray, pixels: np.ndarray | None = None) -> RewardContext:
        """Begin B trajectories: their instructions and first observations (state (B, S) [, pixels (B, H, W, 3)])."""
        state_t = torch.as_tensor(np.asarray(state, dtype=np.float32), device=self.device)
        if state_t.ndim != 2 or state_t.shape[1] != self.model.cfg.state_dim:
            raise ConfigError(f"states must be (B, {self.model.cfg.state_dim}), got {tuple(state_t.shape)}")
        if len(instructions) != len(state_t):
            raise ConfigError(f"one instruction per trajectory: {len(instructions)} instructions, {len(state_t)} states")
        cache = self.model.start(self.goal(list(instructions)))
        _, cache = self.model.observe(cache, state_t, self._time(0, len(state_t)), self._pixels(pixels))
        return RewardContext(cache=cache, t=0, batch=len(state_t))

    @torch.inference_mode()
    def step(self, ctx: RewardContext, action: np.ndarray, next_state: np.ndarray | None = None,
             next_pixels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Score actions (B, A) taken at the context's timestep; then append the observations they led to.

        Returns ``reward``, ``success`` and ``cost``, each (B,) (see :class:`Score`). Leave
        ``next_state`` out after the last action of a trajectory, except for a ``reward_hindsight``
        model, which reads each action's outcome at the observation it led to.
        """
        a = torch.as_tensor(np.asarray(action, dtype=np.float32), device=self.device).clamp(-1.0, 1.0)
        if a.shape != (ctx.batch, self.model.cfg.action_dim):
            raise ConfigError(f"actions must be ({ctx.batch}, {self.model.cfg.action_dim}), got {tuple(a.shape)}")
        hindsight = self.model.cfg.reward_hindsight
        if hindsight and next_state is None:
            raise ConfigError("this model reads each action's reward at the observation it led to (reward_hindsight): "
                              "pass next_state, also after a trajectory's last action")
        out, ctx.cache = self.model.act(ctx.cache, a, self._time(ctx.t, ctx.batch))
        ctx.shared = None  # the cache is this context's own now, no longer a row of step_each's batch
        ctx.t += 1
        if next_state is not None:
            s = torch.as_tensor(np.asarray(next_state, dtype=np.float32), device=self.device)
            h, ctx.cache = self.model.observe_hidden(ctx.cache, s, self._time(ctx.t, ctx.batch), self._pixels(next_pixels))
            if hindsight:
                out = self.model.outcomes(h)
        dense = self.model.dense_reward(out, self._previous([ctx]))
        if self.model.change_head is not None:  # only a reward-change model reads it back
            ctx.dense = dense
        return self._decode(out, dense)

    @torch.inference_mode()
    def step_each(self, contexts: Sequence[RewardContext], action: np.ndarray, next_state: np.ndarray,
                  observe: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:meth:`step` for N one-trajectory contexts at once, each at its own timestep (state-only models).

        Contexts whose caches hold the same number of tokens run as one batch; once ``context``
        timesteps are held every cache does, so N envs stepped together cost one batched pass
        per token instead of N. ``action`` (N, A) is scored; ``next_state`` (N, S) is appended
        where ``observe`` (N,) bool is True (default: everywhere): leave it False where a
        trajectory ended (a ``reward_hindsight`` model still reads the action's outcome there, so
        pass the state each trajectory ended in). Returns ``reward``, ``success`` and ``cost``, each (N,).
        """
        if self.model.pixel_enc is not None:
            raise ConfigError("step_each scores state-only models; step a pixel model's trajectories with step()")
        n = len(contexts)
        if any(c.batch != 1 for c in contexts):
            raise ConfigError("step_each takes contexts of one trajectory each (start them one by one)")
        a = torch.as_tensor(np.asarray(action, dtype=np.float32), device=self.device).clamp(-1.0, 1.0)
        s = torch.as_tensor(np.asarray(next_state, dtype=np.float32), device=self.device)
        if a.shape != (n, self.model.cfg.action_dim) or s.shape != (n, self.model.cfg.state_dim):
            raise ConfigError(f"need actions ({n}, {self.model.cfg.action_dim}) and states ({n}, {self.model.cfg.state_dim}), "
                              f"got {tuple(a.shape)} and {tuple(s.shape)}")
        keep = np.ones(n, dtype=bool) if observe is None else np.asarray(observe, dtype=bool).reshape(n)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(contexts):
            groups.setdefault(c.cache[0][0].shape[2], []).append(i)
        out = {k: np.empty(n, dtype=np.float32) for k in ("reward", "success", "cost")}
        for rows in groups.values():
            cache = _shared_cache([contexts[i] for i in rows])
            t = torch.tensor([contexts[i].t for i in rows], dtype=torch.long, device=self.device)
            o, cache = self.model.act(cache, a[rows], t)
            going = [j for j, i in enumerate(rows) if keep[i]]
            hindsight = self.model.cfg.reward_hindsight
            if hindsight:  # every row's next observation is read, an ended trajectory's too (its cache is dropped below)
                h, cache = self.model.observe_hidden(cache, s[rows], t + 1)
                o = self.model.outcomes(h)
            if going and len(going) < len(rows):
                cache = cache.map(lambda x: x[going], rows=True)
            if going and not hindsight:
                _, cache = self.model.observe(cache, s[[rows[j] for j in going]], t[going] + 1)
            dense = self.model.dense_reward(o, self._previous([contexts[i] for i in rows]))
            for k, v in self._decode(o, dense).items():
                out[k][rows] = v
            if self.model.change_head is not None:  # only a reward-change model reads it back
                for j, i in enumerate(rows):
                    contexts[i].dense = dense[j : j + 1]
            for r, j in enumerate(going):
                ctx = contexts[rows[j]]
                ctx.cache = cache if len(going) == 1 else cache.map(lambda x: x[r:r + 1], rows=True)
                ctx.shared = (cache, r) if len(going) > 1 else None
            for i in rows:
                contexts[i].t += 1
        return out

    # ------------------------------------------------------------------ whole trajectories
    def score(self, observations: Any, actions: np.ndarray, instruction: str) -> Score:
        """Score one trajectory: observations (T or T + 1 states, or a dict with ``state`` [and ``pixels``]), actions (T, A).

        Observation t is the one action t was taken in; a (T + 1)-th observation (where the
        trajectory ended) is accepted and not needed.
        """
        return self.score_batch([(observations, actions, instruction)])[0]

    @torch.inference_mode()
    def score_batch(self, trajectories: Sequence[tuple[Any, np.ndarray, str]]) -> list[Score]:
        """Score several trajectories ``(observations, actions, instruction)`` in lockstep (one batch row each)."""
        if not trajectories:
            return []
        states, pixels, acts = [], [], []
        after = int(self.model.cfg.reward_hindsight)  # observations kept past the last action: the one it led to
        for obs, action, _ in trajectories:
            s, p = _split_observations(obs)
            a = np.asarray(action, dtype=np.float32)
            if a.ndim != 2 or len(a) == 0:
                raise ConfigError(f"actions must be (T, A) with T >= 1, got shape {a.shape}")
            if len(s) not in (len(a), len(a) + 1):
                raise ConfigError(f"{len(a)} actions need {len(a)} or {len(a) + 1} observations, got {len(s)}")
            if self.model.cfg.reward_hindsight and len(s) == len(a):
                raise ConfigError(f"this model reads each action's reward at the observation it led to (reward_hindsight): "
                                  f"pass {len(a) + 1} observations for {len(a)} actions, the last one included")
            if self.model.pixel_enc is not None and p is None:
                raise ConfigError("this model sees pixels: pass observations as a dict with 'state' and 'pixels'")
            states.append(s[: len(a) + after])
            pixels.append(None if p is None or self.model.pixel_enc is None else p[: len(a) + after])
            acts.append(a)
        lengths = [len(a) for a in acts]
        T = max(lengths)
        S = _pad(states, T + after)
        A = _pad(acts, T)
        P = _pad(pixels, T + after) if pixels[0] is not None else None  # type: ignore[arg-type]
        ctx = self.start([t[2] for t in trajectories], S[:, 0], None if P is None else P[:, 0])
        outs = []
        for t in range(T):
            last = t + 1 == T and not after  # a hindsight model reads the last action at the observation it led to
            outs.append(self.step(ctx, A[:, t], None if last else S[:, t + 1], None if last or P is None else P[:, t + 1]))
        stacked = {k: np.stack([o[k] for o in outs], axis=1) for k in outs[0]}  # (B, T)
        return [Score(reward=stacked["reward"][i, :n], success=stacked["success"][i, :n], cost=stacked["cost"][i, :n])
                for i, n in enumerate(lengths)]

    # ------------------------------------------------------------------ helpers
    def _time(self, t: int, batch: int) -> torch.Tensor:
        return torch.full((batch,), t, dtype=torch.long, device=self.device)

    def _pixels(self, pixels: np.ndarray | None) -> torch.Tensor | None:
        if self.model.pixel_enc is None:
            return None
        if pixels is None:
            raise ConfigError("this model sees pixels: make the env with pixels=" + str(self.model.cfg.pixels))
        return torch.as_tensor(np.asarray(pixels), device=self.device)

    def _previous(self, contexts: Sequence[RewardContext]) -> torch.Tensor | None:
        """The dense rewards the contexts' last steps were given, (sum of batches,), NaN where none; None for a model
        without a reward-change head (its reward reads no history)."""
        if self.model.change_head is None:
            return None
        return torch.cat([torch.full((c.batch,), float("nan"), device=self.device) if c.dense is None else c.dense for c in contexts])

    def _decode(self, out: Mapping[str, torch.Tensor], dense: torch.Tensor) -> dict[str, np.ndarray]:
        """The outcome heads' output and this step's :meth:`~embodied.model.TrajectoryModel.dense_reward` -> numpy."""
        return {
            "reward": self.model.expected_reward(out, dense=dense).cpu().numpy().astype(np.float32),
            "success": torch.sigmoid(out["success_logit"].float()).cpu().numpy().astype(np.float32),
            "cost": torch.sigmoid(out["cost_logit"].float()).cpu().numpy().astype(np.float32),
        }


@dataclass
class EnsembleContext:
    """The running state of one trajectory (or B in lockstep) under every member of a :class:`RewardEnsemble`."""

    members: list[RewardContext]
    """One context per member, in the ensemble's order."""


class RewardEnsemble:
    """Several reward models (seeds or data of one recipe) scored in lockstep: their mean, less their disagreement.

    Each step's ``reward`` is the members' mean minus ``disagreement`` x their standard deviation (both in the env's
    reward units); ``success`` is the members' mean probability minus ``success_disagreement`` x its standard deviation
    (clipped to [0, 1]: with two members and 1, the lower of their two probabilities), so a success only one model
    believes in neither ends an episode nor pays its bonus; ``cost`` is the members' mean probability. ``reward_spread``
    (the members' standard deviation of reward) comes with them. A policy trained on one model's reward finds
    the states that model wrongly believes good; models trained apart err apart there, so their spread marks the
    states where the reward does not know, and the penalty steers away from them (the idea of ensemble-penalised
    model-based RL, MOPO and MOReL). :class:`~embodied.policies.vec_reward.VecLearnedReward` and
    :class:`LearnedReward` take an ensemble wherever they take a :class:`RewardModel`.
    """

    def __init__(self, members: Sequence[RewardModel], disagreement: float = 0.0, success_disagreement: float = 0.0) -> None:
        """``members``: two or more models of one state and action layout; ``disagreement`` >= 0 and
        ``success_disagreement`` >= 0 weigh the penalties on reward and on success probability."""
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least two reward models, got {len(members)}")
        for name, k in (("disagreement", disagreement), ("success disagreement", success_disagreement)):
            if not k >= 0:
                raise ConfigError(f"the {name} penalty must be >= 0, got {k}")
        first = members[0].model.cfg
        for m in members[1:]:
            c = m.model.cfg
            if (c.state_dim, c.action_dim, c.pixels) != (first.state_dim, first.action_dim, first.pixels):
                raise ConfigError("the ensemble's reward models see different states, actions or pixels; train them on one recipe")
        self.members = list(members)
        self.disagreement = float(disagreement)
        self.success_disagreement = float(success_disagreement)
        self.model = members[0].model
        """The first member's model (what callers read the layout from)."""
        self.device = members[0].device

    @classmethod
    def load(cls, paths: Sequence[str | os.PathLike[str]], disagreement: float = 0.0, device: str | None = None,
             encoder: str | None = None, success_disagreement: float = 0.0) -> "RewardEnsemble":
        """Each member from its checkpoint or run folder (see :meth:`RewardModel.load`)."""
        return cls([RewardModel.load(p, device=device, encoder=encoder) for p in paths], disagreement, success_disagreement)

    def start(self, instructions: Sequence[str], state: np.ndarray, pixels: np.ndarray | None = None) -> EnsembleContext:
        """:meth:`RewardModel.start` for every member."""
        return EnsembleContext([m.start(instructions, state, pixels) for m in self.members])

    def step(self, ctx: EnsembleContext, action: np.ndarray, next_state: np.ndarray | None = None,
             next_pixels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:meth:`RewardModel.step` for every member, combined (see the class doc)."""
        return self._combine([m.step(c, action, next_state, next_pixels) for m, c in zip(self.members, ctx.members)])

    def step_each(self, contexts: Sequence[EnsembleContext], action: np.ndarray, next_state: np.ndarray,
                  observe: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:meth:`RewardModel.step_each` for every member, combined (see the class doc)."""
        return self._combine([m.step_each([c.members[i] for c in contexts], action, next_state, observe)
                              for i, m in enumerate(self.members)])

    def score(self, observations: Any, actions: np.ndarray, instruction: str) -> Score:
        """:meth:`RewardModel.score` by every member, combined (see the class doc)."""
        return self.score_batch([(observations, actions, instruction)])[0]

    def score_batch(self, trajectories: Sequence[tuple[Any, np.ndarray, str]]) -> list[Score]:
        """:meth:`RewardModel.score_batch` by every member, combined per trajectory (see the class doc)."""
        out = []
        for scores in zip(*(m.score_batch(trajectories) for m in self.members)):
            c = self._combine([{"reward": s.reward, "success": s.success, "cost": s.cost} for s in scores])
            out.append(Score(reward=c["reward"], success=c["success"], cost=c["cost"]))
        return out

    def _combine(self, outs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        r = np.stack([o["reward"] for o in outs])  # (M, B)
        spread = r.std(0)
        p = np.stack([o["success"] for o in outs])  # (M, B)
        return {"reward": (r.mean(0) - self.disagreement * spread).astype(np.float32),
                "success": np.clip(p.mean(0) - self.success_disagreement * p.std(0), 0.0, 1.0).astype(np.float32),
                "cost": np.stack([o["cost"] for o in outs]).mean(0).astype(np.float32),
                "reward_spread": spread.astype(np.float32)}


def _shared_cache(contexts: list[RewardContext]) -> KVCache:
    """The rows' caches stacked along the batch: the batched cache they are views of when they are all of it, in order."""
    first = contexts[0].shared
    if len(contexts) == 1:
        return contexts[0].cache
    if first is not None and first[0][0][0].shape[0] == len(contexts) and all(
            c.shared is not None and c.shared[0] is first[0] and c.shared[1] == r for r, c in enumerate(contexts)):
        return first[0]
    return KVCache.cat([c.cache for c in contexts])


def _split_observations(obs: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(T, S) states and (T, H, W, 3) pixels or None, from an array of states or a dict of observation arrays."""
    if isinstance(obs, Mapping):
        if specs.STATE not in obs:
            raise ConfigError("observations given as a dict need a 'state' array (T, S)")
        s, p = obs[specs.STATE], obs.get(specs.PIXELS)
    else:
        s, p = obs, None
    s = np.asarray(s, dtype=np.float32)
    if s.ndim != 2:
        raise ConfigError(f"states must be (T, S), got shape {s.shape}")
    return s, None if p is None else np.asarray(p)


def _pad(rows: list[np.ndarray], T: int) -> np.ndarray:
    """Stack arrays of different lengths (along axis 0) into (B, T, ...), repeating each one's last row."""
    out = np.empty((len(rows), T, *rows[0].shape[1:]), dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        out[i, len(r):] = r[-1]
    return out


class LearnedReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Replace an env's reward by the model's score of each step for one instruction.

    The wrapped env's observations are the suite's dicts (``state``, ``instruction`` [,
    ``pixels``]). Each episode keeps a key/value-cached context of the model, so scoring a
    step costs two one-token passes. ``info`` gains ``true_reward`` (the env's reward; its
    terms ``reward_*`` and ``is_success`` stay as the env wrote them), ``learned_success``
    and ``learned_cost``. Episodes end where the env ends them, and with ``end_on_success`` also
    where the model's success probability first exceeds it (``terminated``): the task as the
    model sees it, so a run that should not see the true success ends its episodes without it.
    With ``success_bonus`` as well, the reward settles the success (:func:`settle_success`).
    """

    def __init__(self, env: gym.Env, reward_model: "RewardModel | RewardEnsemble", instruction: str | None = None,
                 end_on_success: float | None = None, success_bonus: float | None = None, reward_ceiling: float | None = None) -> None:
        """``instruction`` is what the reward asks for (default: each episode's own observation instruction);
        ``end_on_success`` a success probability in (0, 1) that ends the episode, or None; ``success_bonus`` and
        ``reward_ceiling`` see :func:`settle_success`."""
        gym.utils.RecordConstructorArgs.__init__(self, reward_model=reward_model, instruction=instruction, end_on_success=end_on_success,
                                                 success_bonus=success_bonus, reward_ceiling=reward_ceiling)
        check_threshold(end_on_success, success_bonus, reward_ceiling)
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict) or specs.STATE not in space.spaces:
            raise ConfigError("LearnedReward needs the suite's dict observations with a 'state' (wrap before StateOnly)")
        want = (reward_model.model.cfg.action_dim,)
        if env.action_space.shape != want:
            raise ConfigError(f"the model scores actions of shape {want}, this env takes {env.action_space.shape}; use control='ee'")
        self.reward_model = reward_model
        self.fixed_instruction = instruction
        self.end_on_success = end_on_success
        self.success_bonus = success_bonus
        self.reward_ceiling = reward_ceiling
        self._ctx: RewardContext | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        instruction = self.fixed_instruction or specs.decode_instruction(obs[specs.INSTRUCTION])
        pixels = obs.get(specs.PIXELS)
        self._ctx = self.reward_model.start([instruction], obs[specs.STATE][None], None if pixels is None else pixels[None])
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._ctx is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        pixels = obs.get(specs.PIXELS)
        out = self.reward_model.step(self._ctx, np.asarray(action, dtype=np.float32)[None], obs[specs.STATE][None],
                                     None if pixels is None else pixels[None])
        info = {**info, TRUE_REWARD: float(reward), LEARNED_SUCCESS: float(out["success"][0]), LEARNED_COST: float(out["cost"][0])}
        if self.end_on_success is not None and out["success"][0] > self.end_on_success:
            terminated = True
        reward = settle_success(out["reward"], out["success"], self.end_on_success, self.success_bonus, self.reward_ceiling)
        return obs, float(reward[0]), terminated, truncated, info


def settle_success(reward: np.ndarray, success: np.ndarray, end_on_success: float | None, bonus: float | None,
                   ceiling: float | None = None) -> np.ndarray:
    """The reward of steps (N,) whose episodes the model's success ends: its expected success payment paid once, for sure.

    The reward head regresses the env's reward, which pays ``bonus`` on every solved step, so near a solved state it
    predicts about ``dense + bonus x p`` with p the success probability: a step that keeps p just under the
    ``end_on_success`` threshold earns part of the bonus again and again, and never ends the episode. With ``bonus``,
    each step gets ``reward - bonus x p``, plus ``bonus`` on the step where p passes the threshold (which ends the
    episode), as the env pays its success once where success ends its episodes. None: the reward as predicted.

    ``ceiling`` (with ``bonus``): the most the dense part (``reward - bonus x p``) may pay a step, the env's own bound
    (the suite's dense terms are penalties: 0). The reward head and the success head learn apart, and just short of a
    success the reward head can expect more of the bonus than the success head does (``reward - bonus x p`` > 0 on every
    step of an episode that holds the object 2 cm short), which pays a policy to hover there rather than finish.
    """
    dense = settled_dense(reward, success, end_on_success, bonus, ceiling)
    if bonus is None or end_on_success is None:
        return dense
    return (dense + success_payment(success, end_on_success, bonus)).astype(np.float32)


def success_payment(success: np.ndarray, end_on_success: float | None, bonus: float | None) -> np.ndarray | float:
    """What :func:`settle_success` pays besides the dense part: ``bonus`` on the steps (N,) whose success probability
    passes ``end_on_success`` (ending their episodes), else 0 (0 everywhere without a bonus or a threshold)."""
    if bonus is None or end_on_success is None:
        return 0.0
    return bonus * (success > end_on_success)


def settled_dense(reward: np.ndarray, success: np.ndarray, end_on_success: float | None, bonus: float | None,
                  ceiling: float | None = None) -> np.ndarray:
    """The dense part (N,) of :func:`settle_success`'s reward: all of it but the bonus paid where the model's success ends
    an episode (without ``bonus`` or ``end_on_success``: the reward as predicted)."""
    if bonus is None or end_on_success is None:
        return reward
    dense = reward - bonus * success
    if ceiling is not None:
        dense = np.minimum(dense, ceiling)
    return dense.astype(np.float32)


def check_threshold(end_on_success: float | None, success_bonus: float | None = None, ceiling: float | None = None) -> None:
    """Refuse a success probability that cannot end an episode sensibly (None: episodes end where the env ends them),
    a success bonus without one or below zero, and a reward ceiling without a success bonus or not finite."""
    if end_on_success is not None and not 0.0 < end_on_success < 1.0:
        raise ConfigError(f"the success threshold must be a probability in (0, 1), got {end_on_success}")
    if success_bonus is not None and (end_on_success is None or not success_bonus >= 0):
        raise ConfigError(f"a success bonus ({success_bonus}) needs episodes the model's success ends (--terminate-on-success) "
                          "and must be >= 0")
    if ceiling is not None and (success_bonus is None or not np.isfinite(ceiling)):
        raise ConfigError(f"a reward ceiling ({ceiling}) bounds the dense part of a settled reward: give it with a success bonus "
                          "(--success-bonus) and as a finite number")
