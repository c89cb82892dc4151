"""Safety filters: between a policy and an environment, ``filter(obs, action) -> (action, info)``.

:class:`CandidateFilter` is the one filter of the stack, parametrised by a *cost predictor*
(:class:`CostPredictor`): given the current situation, ``predict`` maps candidate action
sequences (N, H, A) to their predicted cost (N,). Each step the filter

1. checks the policy's proposal (held for H steps, or taken once and then braked, see
   :attr:`FilterConfig.plan`) and keeps it when its predicted cost is below the threshold;
2. otherwise checks candidates around it (the proposal scaled down, rotated, a ring of
   directions at several speeds, and the stopping action) and takes the safe one nearest the
   proposal (Euclidean distance in action space);
3. otherwise uses its fallback (:data:`FALLBACKS`): ``stop`` (the zero action: every
   embodiment's velocity servos bring the fingertip to rest) or ``least_cost`` (default: the
   candidate of least predicted cost, the one nearest the proposal among ties). Stopping
   freezes an episode that starts inside a keep-out zone there (about 1 in 10 do on the
   Hazard envs: every way out costs as much over H steps); ``least_cost`` leaves it.

Two predictors plug in: :class:`ModelCostPredictor` (the model's imagination: the constraint
specs checked on the states it imagines, and its cost head for what no state shows) here, and the MuJoCo lookahead ``embodied.envs.lookahead.SimLookahead``
(an oracle to measure the learned one against), wired in by the application layer because
policies never import envs. :class:`NoFilter` passes every action through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch

from embodied import specs
from embodied.model import KVCache, TrajectoryModel


class CostPredictor(Protocol):
    """What a filter asks of its cost model. ``observe`` and ``commit`` bracket each step."""

    def reset(self) -> None:
        """Start a new episode."""

    def observe(self, observation: Mapping[str, Any]) -> None:
        """The env's observation of this step (one env: ``state`` (S,), ``instruction`` str)."""

    def predict(self, candidates: np.ndarray) -> np.ndarray:
        """(N, H, A) action sequences from the current state -> (N,) predicted cost (>= 0)."""

    def commit(self, action: np.ndarray) -> None:
        """The action (A,) the filter let through this step."""


class SafetyFilter(Protocol):
    """Between policy and environment: the action to execute, and what the filter did (``info["intervened"]``)."""

    def reset(self) -> None: ...

    def filter(self, observation: Mapping[str, Any], action: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]: ...


@dataclass(frozen=True)
class FilterConfig:
    """How a :class:`CandidateFilter` checks and picks actions."""

    horizon: int = 3
    """H: control steps each candidate is imagined ahead."""
    threshold: float = 0.5
    """A candidate is safe when its predicted cost is below this (the sim's summed indicators: 0.5 = no violation;
    the model's: the probability of any violation in H steps)."""
    plan: str = "hold"
    """What a candidate action means over the horizon: "hold" (repeat it H times) or "brake" (once, then stop)."""
    directions: int = 16
    """Directions of the ring of candidates (evenly spaced, the proposal's direction first)."""
    speeds: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    """Magnitudes of the ring candidates, and the factors the proposal is scaled by."""
    state_checks: tuple[str, ...] = ("keep_out", "workspace")
    """Constraint kinds (names in ``embodied.envs.constraints.CONSTRAINTS``) the learned filter checks itself on the
    states its model imagines (see :class:`ModelCostPredictor`); the cost head judges the others. () : the cost head
    alone. The speed limit is left to the head by default: the imagined fingertip velocity drifts under the filter's
    own slowed candidates (BENCHMARKS.md, issue 7), while imagined positions stay close."""
    constraint_margin: float = 0.01
    """Metres (m/s for a speed) by which the state checks widen each forbidden set, against prediction error (1 cm: 0.13
    keep-out violations per episode, mean of the five hazard benchmark rows, against 2.36 with 0; BENCHMARKS.md issue 7)."""
    fallback: str = "least_cost"
    """What to do when no candidate is safe: a name in :data:`FALLBACKS`."""
    chunk: int = 0
    """Check candidates nearest-first in batches of this many, stopping at the first batch with a safe one
    (the result is the same; a simulator lookahead saves most of its work). 0: all in one batch."""

    def __post_init__(self) -> None:
        from embodied.errors import ConfigError

        if self.horizon < 1 or self.directions < 1 or not self.speeds or self.chunk < 0 or not self.constraint_margin >= 0:
            raise ConfigError(f"a filter needs horizon >= 1, directions >= 1, speeds and a margin >= 0, got {self}")
        if self.plan not in ("hold", "brake"):
            raise ConfigError(f"filter plan={self.plan!r}: use 'hold' or 'brake'")
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"filter fallback={self.fallback!r}: use one of {', '.join(FALLBACKS)}")


# ---------------------------------------------------------------------------- fallbacks
Fallback = Callable[[np.ndarray, np.ndarray], int]
"""(candidates (N, A), nearest the proposal first, one of them the stopping action (zeros); their costs (N,)) -> the index to take."""
FALLBACKS: dict[str, Fallback] = {}


def register_fallback(name: str) -> Callable[[Fallback], Fallback]:
    """Decorator: ``@register_fallback("name")`` adds a fallback rule to :data:`FALLBACKS`."""

    def deco(fn: Fallback) -> Fallback:
        FALLBACKS[name] = fn
        return fn

    return deco


@register_fallback("stop")
def stop_fallback(candidates: np.ndarray, costs: np.ndarray) -> int:
    """The stopping action (zero velocity command)."""
    return int(np.flatnonzero(~np.asarray(candidates).any(axis=1))[0])


@register_fallback("least_cost")
def least_cost_fallback(candidates: np.ndarray, costs: np.ndarray) -> int:
    """The candidate of least predicted cost; among ties, the first (candidates come nearest the proposal first).

    Where every candidate costs the same (a fingertip deep inside a keep-out zone, where no
    H-step sequence gets out), this keeps the policy's direction instead of stopping there.
    """
    return int(np.argmin(costs))


# ---------------------------------------------------------------------------- the filters
def candidate_actions(proposal: np.ndarray, directions: int = 16, speeds: Sequence[float] = (1.0, 0.75, 0.5, 0.25)) -> np.ndarray:
    """(N, A) candidates: the proposal, its scaled copies, rotations of it and a ring of directions, the stop last.

    Rotations (for 2-D actions) keep the proposal's speed; the ring spans ``directions`` angles
    from the proposal's direction at every speed in ``speeds``; every candidate is clipped to [-1, 1].
    """
    p = np.clip(np.asarray(proposal, dtype=np.float64), -1.0, 1.0)
    out = [p] + [p * s for s in speeds if s != 1.0]
    if p.shape == (2,):
        norm = float(np.hypot(*p))
        base = float(np.arctan2(p[1], p[0])) if norm > 1e-9 else 0.0
        angles = base + 2 * np.pi * np.arange(1, directions) / directions
        out += [norm * np.array([np.cos(a), np.sin(a)]) for a in angles] if norm > 1e-9 else []
        angles = base + 2 * np.pi * np.arange(directions) / directions
        out += [s * np.array([np.cos(a), np.sin(a)]) for s in speeds for a in angles]
    else:  # joint-space actions: each axis alone, both signs
        eye = np.eye(len(p))
        out += [s * sign * e for s in speeds for e in eye for sign in (1.0, -1.0)]
    out.append(np.zeros_like(p))
    return np.clip(np.stack(out), -1.0, 1.0)


def sequences(actions: np.ndarray, horizon: int, plan: str = "hold") -> np.ndarray:
    """(N, A) first actions -> (N, H, A) sequences: each held H steps ("hold") or taken once then stopped ("brake")."""
    seq = np.repeat(actions[:, None], horizon, axis=1)
    if plan == "brake":
        seq[:, 1:] = 0.0
    return seq


class NoFilter:
    """Lets every action through (``--shield none``)."""

    def reset(self) -> None:
        """Nothing to forget."""

    def filter(self, observation: Mapping[str, Any], action: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        return np.asarray(action, dtype=np.float32), {"intervened": False, "fallback": False}


class CandidateFilter:
    """Keep the proposal when the predictor calls it safe, else the nearest safe candidate, else the fallback."""

    def __init__(self, predictor: CostPredictor, config: FilterConfig | None = None) -> None:
        self.predictor = predictor
        self.cfg = config or FilterConfig()

    def reset(self) -> None:
        self.predictor.reset()

    def filter(self, observation: Mapping[str, Any], action: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The action to execute (A,) float32 and ``info``: intervened, fallback, predicted_cost (of the proposal), cost (of the result)."""
        cfg = self.cfg
        self.predictor.observe(observation)
        proposal = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        first = float(self.predictor.predict(sequences(proposal[None], cfg.horizon, cfg.plan))[0])
        info: dict[str, Any] = {"intervened": False, "fallback": False, "predicted_cost": first, "cost": first, "candidates": 1}
        chosen = proposal
        if not first < cfg.threshold:
            cands = candidate_actions(proposal, cfg.directions, cfg.speeds)[1:]  # the proposal is known unsafe
            order = np.argsort(np.linalg.norm(cands - proposal, axis=1), kind="stable")
            costs = np.full(len(cands), np.inf)
            size = cfg.chunk or len(cands)
            i = -1
            for c0 in range(0, len(order), size):
                idx = order[c0 : c0 + size]
                costs[idx] = np.asarray(self.predictor.predict(sequences(cands[idx], cfg.horizon, cfg.plan)), dtype=np.float64)
                safe = idx[costs[idx] < cfg.threshold]
                if len(safe):
                    i = int(safe[0])  # idx is sorted by distance, so the first safe one is the nearest
                    break
            info["candidates"] = 1 + int(np.isfinite(costs).sum())
            if i < 0:
                i = int(order[FALLBACKS[cfg.fallback](cands[order], costs[order])])
                info["fallback"] = True
            chosen = cands[i]
            info.update(intervened=True, cost=float(costs[i]))
        out = chosen.astype(np.float32)
        self.predictor.commit(out)
        return out, info


# ---------------------------------------------------------------------------- the model's predictor
def p_any(p: np.ndarray, axis: int) -> np.ndarray:
    """P(at least one) of independent events with probabilities ``p`` along ``axis``: ``1 - prod(1 - p)``."""
    return 1.0 - np.prod(1.0 - p, axis=axis)


StateCost = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(current state (S,), imagined states (N, H, S)) -> (N, H) in [0, 1]: a cost read off states (e.g. the constraint
specs' own check, ``embodied.envs.constraints.state_cost``)."""


class ModelCostPredictor:
    """The learned cost predictor: the model imagines each candidate H steps ahead; cost = P(any violation).

    It keeps a closed-loop key/value cache of the episode (the observations, and the actions the
    filter let through) with :meth:`~embodied.model.TrajectoryModel.step`, and imagines all N
    candidates at once from that cache with :meth:`~embodied.model.TrajectoryModel.imagine`
    (the cache is shared, expanded without a copy): P(any violation) = 1 - prod_h (1 - cost_h).

    Each imagined step's cost is the larger of

    - ``state_cost`` of the imagined state, where given: the model predicts where the fingertip
      goes, the constraint specs say whether that is allowed. This covers constraints the cost
      head never saw (a keep-out zone named in plain language for one episode);
    - the cost head's word on ``head_terms`` (names in :data:`embodied.specs.COST_TERMS`): their
      P(any) where the model has per-term outputs (``ModelConfig.cost_terms``), else the total's
      probability; none when ``head_terms`` is empty. ``head_terms=None`` (the default) reads the
      whole head: the larger of the total's probability and every term's P(any).
    """

    def __init__(self, model: TrajectoryModel, encode: Callable[[Sequence[str]], np.ndarray], device: str | torch.device | None = None,
                 state_cost: StateCost | None = None, head_terms: Sequence[str] | None = None) -> None:
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.encode = encode
        self.state_cost = state_cost
        unknown = sorted(set(head_terms or ()) - set(specs.COST_TERMS))
        if unknown:
            raise ValueError(f"unknown cost terms {unknown}; the terms are {', '.join(specs.COST_TERMS)}")
        self.head_terms = None if head_terms is None else [specs.COST_TERMS.index(t) for t in head_terms]
        self.reset()

    def reset(self) -> None:
        self._cache: KVCache | None = None
        self._instruction: str | None = None
        self._t = 0
        self._last: torch.Tensor | None = None
        self._state: torch.Tensor | None = None

    @torch.inference_mode()
    def observe(self, observation: Mapping[str, Any]) -> None:
        instruction = specs.decode_instruction(observation[specs.INSTRUCTION])
        if self._cache is None or instruction != self._instruction:
            self.reset()
            goal = torch.as_tensor(np.asarray(self.encode([instruction]), dtype=np.float32), device=self.device)
            self._cache, self._instruction = self.model.start(goal), instruction
        s = torch.as_tensor(np.asarray(observation[specs.STATE], dtype=np.float32).reshape(1, -1), device=self.device)
        p = observation.get(specs.PIXELS) if self.model.pixel_enc is not None else None
        pix = None if p is None else torch.as_tensor(np.asarray(p)[None], device=self.device)
        _, self._cache = self.model.step(self._cache, s, torch.tensor([self._t], device=self.device), pix, self._last)
        self._state = s

    @torch.inference_mode()
    def predict(self, candidates: np.ndarray) -> np.ndarray:
        if self._cache is None or self._state is None:
            raise RuntimeError("observe() the current observation before predict()")
        seqs = torch.as_tensor(np.asarray(candidates, dtype=np.float32), device=self.device)  # (N, H, A)
        out = self.model.imagine(self._cache, self._state, torch.tensor([self._t], device=self.device), seqs, observed=True)
        total = out["cost"].double().cpu().numpy()  # (N, H): P(the step costs something)
        terms = out["cost_terms"].double().cpu().numpy() if "cost_terms" in out else None  # (N, H, K)
        if self.head_terms is None:  # the whole head
            cost = total if terms is None else np.maximum(total, p_any(terms, axis=-1))
        elif self.head_terms:
            cost = total if terms is None else p_any(terms[..., self.head_terms], axis=-1)
        else:
            cost = np.zeros_like(total)
        if self.state_cost is not None:
            cost = np.maximum(cost, self.state_cost(self._state[0].double().cpu().numpy(), out["state"].double().cpu().numpy()))
        return p_any(cost, axis=1)

    def commit(self, action: np.ndarray) -> None:
        self._last = torch.as_tensor(np.asarray(action, dtype=np.float32).reshape(1, -1), device=self.device)
        self._t += 1
