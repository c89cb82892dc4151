"""Planning in imagination: CEM or MPPI over the model's imagined rollouts, as a policy.

At every control step :class:`PlannerPolicy` searches action sequences of ``horizon`` steps:
it draws ``population`` candidates from a Gaussian per step and action dimension, imagines
each with :class:`~embodied.policies.dynamics.DynamicsModel` from the episode's own context
(the model's key/value cache, advanced one timestep per control step), scores them with the
model's reward and cost heads (:func:`score`), and refits the Gaussian (a registered
:class:`Search`: ``cem`` or ``mppi``) for ``iterations`` rounds. It executes the first action
of the final mean and keeps the rest, shifted by one, as the next step's starting mean. With
``prior`` the first action's mean starts at the model's own (direct policy) action, so the
search refines the policy rather than starting blind.

The policy follows stable-baselines3's ``predict`` protocol like
:class:`~embodied.policies.FoundationPolicy` (which it drives for the per-episode caches).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from embodied.config import PlanConfig
from embodied.errors import ConfigError

from .dynamics import Context, DynamicsModel, Imagined, policy_context
from .foundation import FoundationPolicy


def score(imagined: Imagined, cost_weight: float = 1.0) -> torch.Tensor:
    """(N,) score of each candidate: the sum of its imagined rewards minus ``cost_weight`` x the sum of its
    imagined cost probabilities (expected number of costly steps)."""
    return imagined.reward.sum(1) - cost_weight * imagined.cost.sum(1)


class Search(ABC):
    """How the sampling Gaussian is refitted to scored candidates. Subclasses register with :func:`register_planner`."""

    name: ClassVar[str]

    def __init__(self, cfg: PlanConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def refit(self, samples: torch.Tensor, scores: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """New (mean, std), each (H, A), from candidates ``samples`` (N, H, A) and their ``scores`` (N,)."""


PLANNERS: dict[str, type[Search]] = {}
"""Search methods by name (filled by :func:`register_planner`)."""


def register_planner(name: str) -> Callable[[type[Search]], type[Search]]:
    """Class decorator: ``@register_planner("name")`` adds a :class:`Search`."""

    def deco(cls: type[Search]) -> type[Search]:
        if name in PLANNERS:
            raise ValueError(f"planner {name!r} is already registered")
        cls.name = name
        PLANNERS[name] = cls
        return cls

    return deco


def make_search(cfg: PlanConfig) -> Search:
    """The registered search method ``cfg.planner``."""
    if cfg.planner not in PLANNERS:
        raise ConfigError(f"unknown planner {cfg.planner!r}; use one of: {', '.join(PLANNERS)}")
    return PLANNERS[cfg.planner](cfg)


MIN_STD = 0.05
"""Floor of the sampling standard deviation (actions span [-1, 1]), so the search never collapses to a point."""


@register_planner("cem")
class CrossEntropy(Search):
    """Cross-entropy method: the Gaussian becomes the mean and spread of the best ``elites`` fraction."""

    def refit(self, samples, scores, mean, std):
        k = max(2, int(round(self.cfg.elites * len(samples))))
        elite = samples[scores.topk(min(k, len(samples))).indices]
        return elite.mean(0), elite.std(0).clamp(min=MIN_STD)


@register_planner("mppi")
class PathIntegral(Search):
    """MPPI: the mean becomes the softmax(score / temperature)-weighted average of the candidates; the spread stays."""

    def refit(self, samples, scores, mean, std):
        w = torch.softmax((scores - scores.max()) / self.cfg.temperature, dim=0)
        return (w[:, None, None] * samples).sum(0), std


def plan(dynamics: DynamicsModel, ctx: Context, cfg: PlanConfig, mean: torch.Tensor, generator: torch.Generator,
         search: Search | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Search action sequences from ``ctx``, starting at ``mean`` (H, A); returns the final mean (H, A) and
    the search's trace: the score of the first and of the last iteration's best candidate, and of the mean."""
    search = search or make_search(cfg)
    std = torch.full_like(mean, cfg.init_std)
    trace: dict[str, float] = {}
    for it in range(cfg.iterations):
        noise = torch.randn((cfg.population, *mean.shape), generator=generator, device=generator.device).to(mean.device)
        samples = (mean + std * noise).clamp(-1, 1)
        samples[0] = mean.clamp(-1, 1)  # the current mean competes too
        scores = score(dynamics.imagine(ctx, samples), cfg.cost_weight)
        if it == 0:
            trace["first_best"] = float(scores.max())
            trace["first_mean"] = float(scores.mean())
        trace["last_best"] = float(scores.max())
        mean, std = search.refit(samples, scores, mean, std)
    trace["final_mean"] = float(score(dynamics.imagine(ctx, mean.clamp(-1, 1)[None]), cfg.cost_weight)[0]) if cfg.iterations else 0.0
    return mean.clamp(-1, 1), trace


class PlannerPolicy:
    """Act by planning in the model's imagination (SB3 ``predict`` protocol)."""

    def __init__(self, policy: FoundationPolicy, config: PlanConfig = PlanConfig()) -> None:
        if not policy.use_cache:
            raise ConfigError("the planner imagines from the policy's key/value cache; build the FoundationPolicy with use_cache=True")
        self.policy = policy
        self.dynamics = DynamicsModel.of(policy)
        self.cfg = config
        self.search = make_search(config)
        self.generator = torch.Generator().manual_seed(config.seed)
        self._plans: list[torch.Tensor | None] = []
        self.last_trace: list[dict[str, float]] = []
        """Per batch row, the last search's trace (see :func:`plan`)."""

    @classmethod
    def load(cls, path: str | os.PathLike[str], config: PlanConfig = PlanConfig(), device: str | None = None,
             encoder: str | None = None) -> "PlannerPolicy":
        """From a checkpoint or run folder (its best checkpoint)."""
        return cls(FoundationPolicy.load(path, device=device, encoder=encoder), config)

    def reset(self) -> None:
        """Forget every running episode; the candidates' noise restarts from the seed."""
        self.policy.reset()
        self._plans = []
        self.generator.manual_seed(self.cfg.seed)

    @torch.inference_mode()
    def predict(self, observation: Any, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, None]:
        """Planned actions for single or batched observations (``deterministic`` has no effect: the plan's mean is executed)."""
        proposal, _ = self.policy.predict(observation, episode_start=episode_start, deterministic=True)
        batched = proposal.ndim == 2
        proposal = proposal if batched else proposal[None]
        n = len(proposal)
        starts = np.zeros(n, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool).reshape(n)
        if len(self._plans) != n:
            self._plans = [None] * n
        self.last_trace = []
        actions = np.empty_like(proposal)
        for i in range(n):
            prop = torch.as_tensor(proposal[i], device=self.dynamics.device)
            prev = self._plans[i]
            if prev is None or starts[i] or self.policy._episodes[i].t == 1:  # a new episode
                mean = prop.expand(self.cfg.horizon, -1).clone() if self.cfg.prior else prop.new_zeros(self.cfg.horizon, len(prop))
            else:
                mean = torch.cat([prev[1:], prev[-1:]])
                if self.cfg.prior:
                    mean[0] = prop
            best, trace = plan(self.dynamics, policy_context(self.policy, i), self.cfg, mean, self.generator, self.search)
            self._plans[i] = best
            self.last_trace.append(trace)
            actions[i] = best[0].cpu().numpy()
            self.policy.set_action(i, best[0:1])
        return (actions if batched else actions[0]), None
