"""Planning in imagination: CEM or MPPI over the model's imagined rollouts, as a policy.

At every control step :class:`PlannerPolicy` searches action sequences of ``horizon`` steps:
it draws ``population`` candidates from a Gaussian per step and action dimension, imagines
each with :class:`~embodied.policies.dynamics.DynamicsModel` from the episode's own context
(the model's key/value cache, advanced one timestep per control step), scores them with the
model's reward and cost heads (:func:`candidate_score`), and refits the Gaussian (a registered
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
from typing import Any, ClassVar

import numpy as np
import torch

from embodied.config import PlanConfig
from embodied.errors import ConfigError
from embodied.registry import Registry

from .dynamics import Context, DynamicsModel, Imagined, policy_context, stack_contexts
from .foundation import FoundationPolicy


def candidate_score(imagined: Imagined, cost_weight: float = 1.0) -> torch.Tensor:
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
        """New (mean, std), each (B, H, A), from B searches' candidates ``samples`` (B, N, H, A) and their ``scores`` (B, N)."""


PLANNERS: Registry[type[Search]] = Registry("planner")
"""Search methods by name."""
register_planner = PLANNERS.register
"""Class decorator: ``@register_planner("name")`` adds a :class:`Search`."""


def make_search(cfg: PlanConfig) -> Search:
    """The registered search method ``cfg.planner``."""
    return PLANNERS[cfg.planner](cfg)  # an unknown name is a one-line ConfigError


MIN_STD = 0.05
"""Floor of the sampling standard deviation (actions span [-1, 1]), so the search never collapses to a point."""


@register_planner("cem")
class CrossEntropy(Search):
    """Cross-entropy method: the Gaussian becomes the mean and spread of the best ``elites`` fraction."""

    def refit(self, samples, scores, mean, std):
        N = samples.shape[1]
        k = min(N, max(2, int(round(self.cfg.elites * N))))
        idx = scores.topk(k, dim=1).indices  # (B, k)
        elite = samples.gather(1, idx[:, :, None, None].expand(-1, -1, *samples.shape[2:]))
        return elite.mean(1), elite.std(1).clamp(min=MIN_STD)


@register_planner("mppi")
class PathIntegral(Search):
    """MPPI: the mean becomes the softmax(score / temperature)-weighted average of the candidates; the spread stays."""

    def refit(self, samples, scores, mean, std):
        w = torch.softmax((scores - scores.max(1, keepdim=True).values) / self.cfg.temperature, dim=1)
        return (w[:, :, None, None] * samples).sum(1), std


def plan(dynamics: DynamicsModel, ctx: Context, cfg: PlanConfig, mean: torch.Tensor, generator: torch.Generator,
         search: Search | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Search action sequences for B episodes at once from ``ctx`` (one context, or B stacked by
    :func:`~embodied.policies.dynamics.stack_contexts`), starting at ``mean`` (B, H, A). Returns the final
    means (B, H, A) and the search's trace, each (B,): ``first_mean`` and ``first_best``, the first
    iteration's average and best candidate score, ``last_best``, and ``final_mean``, the returned plan's."""
    search = search or make_search(cfg)
    B, H, A = mean.shape
    N = cfg.population
    std = torch.full_like(mean, cfg.init_std)
    trace: dict[str, torch.Tensor] = {}
    for it in range(cfg.iterations):
        noise = torch.randn((B, N, H, A), generator=generator, device=generator.device).to(mean.device)
        samples = (mean[:, None] + std[:, None] * noise).clamp(-1, 1)
        samples[:, 0] = mean.clamp(-1, 1)  # the current mean competes too
        scores = candidate_score(dynamics.imagine(ctx, samples.reshape(B * N, H, A), per_context=N), cfg.cost_weight).view(B, N)
        if it == 0:
            trace["first_best"], trace["first_mean"] = scores.max(1).values, scores.mean(1)
        trace["last_best"] = scores.max(1).values
        mean, std = search.refit(samples, scores, mean, std)
    mean = mean.clamp(-1, 1)
    trace["final_mean"] = candidate_score(dynamics.imagine(ctx, mean, per_context=1), cfg.cost_weight)
    return mean, trace


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
        self.last_trace = [{} for _ in range(n)]
        actions = np.empty_like(proposal)
        prop = torch.as_tensor(proposal, device=self.dynamics.device)
        means = []
        for i in range(n):
            prev = self._plans[i]
            if prev is None or starts[i] or self.policy._episodes[i].t == 1:  # a new episode
                mean = prop[i].expand(self.cfg.horizon, -1).clone() if self.cfg.prior else prop.new_zeros(self.cfg.horizon, prop.shape[1])
            else:
                mean = torch.cat([prev[1:], prev[-1:]])
                if self.cfg.prior:
                    mean[0] = prop[i]
            means.append(mean)
        groups: dict[int, list[int]] = {}  # rows at the same timestep search together (lockstep envs: all)
        for i in range(n):
            groups.setdefault(self.policy._episodes[i].t, []).append(i)
        for rows in groups.values():
            ctx = stack_contexts([policy_context(self.policy, i) for i in rows])
            best, trace = plan(self.dynamics, ctx, self.cfg, torch.stack([means[i] for i in rows]), self.generator, self.search)
            for j, i in enumerate(rows):
                self._plans[i] = best[j]
                self.last_trace[i] = {k: float(v[j]) for k, v in trace.items()}
                actions[i] = best[j, 0].cpu().numpy()
        self.policy.executed(actions)  # the planned actions, not the proposals, go into the episodes' contexts
        return (actions if batched else actions[0]), None
