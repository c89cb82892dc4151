"""Safety filters wired to environments and models (application layer): ``--shield none|learned|sim``.

:data:`SHIELDS` maps a shield name to a builder ``(env, ShieldSpec) -> SafetyFilter``; the
builders join the filters of :mod:`embodied.policies.safety` with their cost predictors:
the model's imagination (``learned``) or a MuJoCo lookahead on a copy of the env's state
(``sim``, from :mod:`embodied.envs.lookahead`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from embodied.registry import Registry
from embodied.errors import ConfigError

SIM_CHUNK = 8
"""The sim filter checks candidates nearest-first in batches of this many (same result, less simulation)."""


@dataclass
class ShieldSpec:
    """What a shield builder may use: the filter settings and, for ``learned``, a model and its sentence encoder."""

    config: Any = None
    """A :class:`~embodied.policies.safety.FilterConfig` (default settings when None)."""
    model: Any = None
    """The :class:`~embodied.model.TrajectoryModel` whose cost head the learned filter imagines with."""
    encode: Callable[[Any], Any] | None = None
    """Instructions -> (N, goal_dim) embeddings, as the model was trained with."""
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[Any, ShieldSpec], Any]
SHIELDS: Registry[Builder] = Registry("shield")
register_shield = SHIELDS.register
"""Decorator: ``@register_shield("name")`` adds a builder ``(env, ShieldSpec) -> SafetyFilter``."""


@register_shield("none")
def _no_shield(env: Any, spec: ShieldSpec) -> Any:
    from embodied.policies.safety import NoFilter

    return NoFilter()


@register_shield("learned")
def _learned_shield(env: Any, spec: ShieldSpec) -> Any:
    from embodied.envs.constraints import CONSTRAINTS, state_checked, state_cost
    from embodied.policies.safety import CandidateFilter, FilterConfig, ModelCostPredictor

    if spec.model is None or spec.encode is None:
        raise ConfigError("the learned shield needs a model: give --ckpt (or --shield-ckpt) of a trained run")
    cfg = spec.config or FilterConfig()
    unknown = sorted(set(cfg.state_checks) - set(CONSTRAINTS))
    if unknown:
        raise ConfigError(f"the filter's state_checks name unknown constraint kinds {unknown}; kinds: {', '.join(CONSTRAINTS)}")
    if not cfg.state_checks:  # the cost head alone, all of it
        return CandidateFilter(ModelCostPredictor(spec.model, spec.encode, spec.device), cfg)
    constraints = getattr(env.unwrapped, "constraints", ())
    checked = [c for c in constraints if c.name in cfg.state_checks and state_checked(c)]
    head_terms = sorted({c.term for c in constraints if c not in checked})  # what the cost head judges: the env's other constraints
    predictor = ModelCostPredictor(spec.model, spec.encode, spec.device, state_cost=state_cost(checked, cfg.constraint_margin), head_terms=head_terms)
    return CandidateFilter(predictor, cfg)


@register_shield("sim")
def _sim_shield(env: Any, spec: ShieldSpec) -> Any:
    from dataclasses import replace

    from embodied.envs.lookahead import SimLookahead
    from embodied.policies.safety import CandidateFilter, FilterConfig

    cfg = spec.config or FilterConfig()
    return CandidateFilter(SimLookahead(env), replace(cfg, chunk=cfg.chunk or SIM_CHUNK))


def shield_factory(name: str, spec: ShieldSpec | None = None) -> Callable[[Any], Any]:
    """``env -> SafetyFilter`` for the shield ``name`` (an unknown name is a one-line ConfigError)."""
    builder = SHIELDS[name]
    spec = spec or ShieldSpec()
    return lambda env: builder(env, spec)


def load_shield_model(path: str, device: str | None = None) -> ShieldSpec:
    """A :class:`ShieldSpec` holding the model and encoder of a run or checkpoint folder (for ``learned``)."""
    from embodied.policies import FoundationPolicy

    p = FoundationPolicy.load(path, device=device)
    return ShieldSpec(model=p.model, encode=p.encode, device=str(p.device))

