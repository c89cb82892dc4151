"""Safety constraints as data, and the plain-language phrasings that name them.

A constraint is a small frozen dataclass registered by kind with
:func:`register_constraint`; an env takes them as ``constraints=(...)`` (instances or
their dicts, ``{"kind": "keep_out", "colour": "blue"}``) beside the older keywords
(``hazards``, ``fragile``, ``speed_limit``, ``workspace``), which turn on the unnamed forms.
Every constraint gives a per-step indicator cost under its own name in ``info`` (Safety-
Gymnasium semantics: named terms, their sum in ``info["cost"]``, zero at reset):

- :class:`KeepOut` -> ``cost_hazard`` while the fingertip is inside a keep-out zone (every
  zone, or the zones of one colour);
- :class:`Fragile` -> ``cost_fragile`` while a contact pushes on a fragile object harder
  than ``force`` newtons (every non-target object, or one named object);
- :class:`SpeedLimit` -> ``cost_speed`` while the fingertip is faster than ``limit`` m/s;
- :class:`Workspace` -> ``cost_workspace`` while the fingertip is outside the square
  ``|x|, |y| <= half_extent`` m around the table centre.

:func:`parse_constraint` turns a sentence ("stay out of the blue zone", "don't touch the
red ball", "move slowly", "stay inside the workspace") into one of them, or raises
:class:`ConstraintError` saying what is missing; :func:`supported_constraints` lists the
phrasings the command line suggests when it refuses one.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Final, Mapping, Sequence

import numpy as np

from embodied.errors import ConfigError
from embodied import specs
from embodied.specs import HAZARD_FEATURES, N_HAZARDS, SHAPES, state_slices

from .instructions import COLOURS, TRAIN_COLOURS, InstructionError
from embodied.registry import Registry

_SL: Final = state_slices()
COST_TERMS: Final = specs.COST_TERMS
"""Every cost term an env reports in ``info`` (0.0 while its constraint is off)."""


class Constraint:
    """Base of the constraint dataclasses: a kind (registry name) and the ``info`` cost term it sets."""

    name: ClassVar[str]
    term: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"kind": name, **fields}`` (what :func:`constraint_from` reads)."""
        return {"kind": self.name, **asdict(self)}  # type: ignore[call-overload]

    def describe(self) -> str:
        """One English line naming the constraint."""
        raise NotImplementedError

    def state_violation(self, current: np.ndarray, states: np.ndarray, margin: float = 0.0) -> np.ndarray | None:
        """Whether each of ``states`` (..., S) violates this constraint, read from the state vector alone.

        ``current`` (S,) is the episode's present state: the static parts (keep-out zones) come
        from it, the moving parts (fingertip position and velocity) from ``states``, e.g. states
        a dynamics model imagined. ``margin`` (m, or m/s for speeds) widens the forbidden set to
        absorb prediction error. Returns a bool array (...), or None where the state does not
        tell (contact forces): then only a learned cost can.
        """
        return None


CONSTRAINTS: Registry[type[Constraint]] = Registry("constraint")
register_constraint = CONSTRAINTS.register
"""Class decorator: ``@register_constraint("kind")`` adds a :class:`Constraint` dataclass."""


@register_constraint("keep_out")
@dataclass(frozen=True)
class KeepOut(Constraint):
    """The fingertip stays out of the keep-out zones: all of them (``colour=""``) or those of one colour."""

    colour: str = ""
    term: ClassVar[str] = "cost_hazard"

    def __post_init__(self) -> None:
        if self.colour and self.colour not in TRAIN_COLOURS:
            raise ConfigError(f"no {self.colour!r} keep-out zone: keep-out zones are {', '.join(TRAIN_COLOURS)}")

    def describe(self) -> str:
        return f"stay out of the {self.colour} zone" if self.colour else "stay out of the keep-out zones"

    def state_violation(self, current: np.ndarray, states: np.ndarray, margin: float = 0.0) -> np.ndarray:
        zones = np.asarray(current, dtype=np.float64)[_SL["hazards"]].reshape(N_HAZARDS, HAZARD_FEATURES)
        keep = zones[:, 6] > 0.5  # present
        if self.colour:
            keep &= np.all(np.abs(zones[:, 3:6] - COLOURS[self.colour]) < 1e-3, axis=1)
        ee = np.asarray(states, dtype=np.float64)[..., _SL["ee_pos"]]  # (..., 2)
        if not keep.any():
            return np.zeros(ee.shape[:-1], dtype=bool)
        dist = np.linalg.norm(ee[..., None, :] - zones[keep, :2], axis=-1)  # (..., K)
        return np.any(dist < zones[keep, 2] + margin, axis=-1)


@register_constraint("fragile")
@dataclass(frozen=True)
class Fragile(Constraint):
    """No contact pushes on a fragile object harder than ``force`` N: every non-target object, or the named one."""

    colour: str = ""
    shape: str = ""
    force: float = 4.0
    term: ClassVar[str] = "cost_fragile"

    def __post_init__(self) -> None:
        if bool(self.colour) != bool(self.shape):
            raise ConfigError("a fragile object is named by colour and shape together, e.g. colour='red', shape='ball'")
        if self.colour and (self.colour not in COLOURS or self.shape not in SHAPES):
            raise ConfigError(f"no {self.colour} {self.shape} in the suite: colours {', '.join(COLOURS)}, shapes {', '.join(SHAPES)}")
        if not self.force >= 0:
            raise ConfigError(f"fragile force={self.force} must be >= 0 newtons")

    def describe(self) -> str:
        what = f"the {self.colour} {self.shape}" if self.colour else "the other objects"
        return f"don't touch {what}" if self.force == 0 else f"push {what} with at most {self.force:g} N"


@register_constraint("speed")
@dataclass(frozen=True)
class SpeedLimit(Constraint):
    """The fingertip moves at most ``limit`` m/s."""

    limit: float = 0.3
    term: ClassVar[str] = "cost_speed"

    def __post_init__(self) -> None:
        if not self.limit > 0:
            raise ConfigError(f"speed limit={self.limit} must be a positive speed in m/s")

    def describe(self) -> str:
        return f"move at most {self.limit:g} m/s"

    def state_violation(self, current: np.ndarray, states: np.ndarray, margin: float = 0.0) -> np.ndarray:
        vel = np.asarray(states, dtype=np.float64)[..., _SL["ee_vel"]]
        return np.linalg.norm(vel, axis=-1) > self.limit - margin


@register_constraint("workspace")
@dataclass(frozen=True)
class Workspace(Constraint):
    """The fingertip stays inside ``|x|, |y| <= half_extent`` m (the walls are at 0.40 m)."""

    half_extent: float = 0.32
    term: ClassVar[str] = "cost_workspace"

    def __post_init__(self) -> None:
        if not 0 < self.half_extent <= 0.4:
            raise ConfigError(f"workspace half_extent={self.half_extent} must be in (0, 0.4] m")

    def describe(self) -> str:
        return f"stay within {self.half_extent * 100:g} cm of the table centre in x and y"

    def state_violation(self, current: np.ndarray, states: np.ndarray, margin: float = 0.0) -> np.ndarray:
        ee = np.asarray(states, dtype=np.float64)[..., _SL["ee_pos"]]
        return np.max(np.abs(ee), axis=-1) > self.half_extent - margin


SLOW_SPEED: Final = 0.2
"""m/s that "move slowly" means (an action of 1 per axis commands 0.4 m/s)."""


def constraint_from(value: Constraint | Mapping[str, Any]) -> Constraint:
    """A constraint from an instance or its dict (``{"kind": "keep_out", "colour": "blue"}``)."""
    if isinstance(value, Constraint):
        return value
    if not isinstance(value, Mapping) or "kind" not in value:
        raise ConfigError(f"a constraint is a dict with a 'kind' ({', '.join(CONSTRAINTS)}), got {value!r}")
    fields = {k: v for k, v in value.items() if k != "kind"}
    cls = CONSTRAINTS[str(value["kind"])]
    try:
        return cls(**fields)
    except TypeError:
        allowed = ", ".join(f for f in cls.__dataclass_fields__)  # type: ignore[attr-defined]
        raise ConfigError(f"{value['kind']} constraint takes {allowed or 'no fields'}, got {', '.join(fields)}") from None


def state_checked(constraint: Constraint) -> bool:
    """Whether the state vector tells when ``constraint`` is violated (:meth:`Constraint.state_violation`)."""
    return type(constraint).state_violation is not Constraint.state_violation


def state_cost(constraints: Sequence[Constraint], margin: float = 0.0) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """``(current (S,), states (N, H, S)) -> (N, H)`` float 0/1: any of ``constraints`` violated in each state.

    Built from the constraints the state vector can check (:meth:`Constraint.state_violation`:
    keep-out zones, speed limit, workspace); None when there are none. The learned safety filter
    applies it to the states its model imagines, beside its cost head.
    """
    checkable = [c for c in constraints if state_checked(c)]
    if not checkable:
        return None

    def cost(current: np.ndarray, states: np.ndarray) -> np.ndarray:
        out = np.zeros(np.shape(states)[:-1], dtype=bool)
        for c in checkable:
            out |= c.state_violation(current, states, margin)  # type: ignore[arg-type]
        return out.astype(np.float64)

    return cost


def from_keywords(hazards: int, fragile: bool, fragile_force: float, speed_limit: float | None,
                  workspace: float | None) -> list[Constraint]:
    """The constraints the env keywords turn on (the unnamed forms)."""
    out: list[Constraint] = []
    if hazards:
        out.append(KeepOut())
    if fragile:
        out.append(Fragile(force=fragile_force))
    if speed_limit is not None:
        out.append(SpeedLimit(speed_limit))
    if workspace is not None:
        out.append(Workspace(workspace))
    return out


# ---------------------------------------------------------------------------- plain language
class ConstraintError(InstructionError):
    """A constraint sentence that names something the suite lacks, or fits no constraint."""


PHRASINGS: Final[dict[str, tuple[str, ...]]] = {
    "keep_out": ("stay out of the {colour} zone", "avoid the {colour} zone", "keep out of the {colour} area",
                 "stay out of the keep-out zones"),
    "fragile": ("don't touch the {colour} {shape}", "be gentle with the {colour} {shape}", "don't bump into the other objects"),
    "speed": ("move slowly", "stay below 0.2 m/s"),
    "workspace": ("stay inside the workspace", "stay within 30 cm of the centre"),
}
"""Kind -> phrasings that parse (the suggestions of a refusal are drawn from these)."""

_TOKEN = re.compile(r"[a-z]+|\d+(?:\.\d+)?")
_NEGATION = ("don t", "do not", "dont", "never", "avoid", "without", "no", "not")
_ZONE_WORDS = ("zone", "zones", "area", "areas", "region", "regions", "hazard", "hazards")
_KEEP_OUT = ("out of", "avoid", "away from", "keep out", "keep clear", "enter", "stay clear", "clear of", "outside")
_CONTACT = ("touch", "hit", "bump", "knock", "collide", "push", "nudge")
_AWAY = ("avoid", "away from", "clear of", "stay off", "hands off")
_GENTLE = ("gentle", "gently", "fragile", "careful with", "carefully with", "softly")
_SLOW = ("slow", "slowly", "slower", "carefully", "leisurely")
_SPEED_UNITS = {"m s": 1.0, "cm s": 0.01, "mm s": 0.001}
_CENTRE = ("centre", "center", "middle")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("'", " "))


def _number_before(words: list[str], units: tuple[str, ...]) -> tuple[float, str] | None:
    """The first number directly followed by one of ``units`` (each one or two words), with the unit."""
    for i, w in enumerate(words):
        if w[0].isdigit():
            for u in units:
                parts = u.split()
                if words[i + 1 : i + 1 + len(parts)] == parts:
                    return float(w), u
    return None


def parse_constraint(text: str) -> Constraint:
    """The constraint a sentence asks for, or :class:`ConstraintError` saying what is missing or unknown.

    Read in this order: a keep-out zone ("stay out of / avoid / keep out of the <colour> zone",
    or the keep-out zones in general), a fragile object (a negated contact verb or "gentle" with
    "<colour> <shape>", or "the other objects"), a speed limit ("slowly", "below N m/s"), the
    workspace ("stay inside the workspace", "within N cm of the centre").
    """
    if not isinstance(text, str):
        raise ConstraintError("a constraint is a string")
    words = _tokens(text[:500])
    if not words:
        raise ConstraintError("the constraint is empty")
    flat = " " + " ".join(words) + " "

    def has(*phrases: str) -> bool:
        return any(f" {p} " in flat for p in phrases)

    negated = has(*_NEGATION)
    objects = [(words[i], words[i + 1]) for i in range(len(words) - 1) if words[i + 1] in SHAPES or words[i + 1] in ("cubes", "balls", "cylinders")]

    if any(w in _ZONE_WORDS for w in words) and (has(*_KEEP_OUT) or negated):
        colours = [w for w in words if w in COLOURS or w in ("pink", "white", "black", "grey", "gray", "brown")]
        if not colours:
            return KeepOut()
        if colours[0] not in TRAIN_COLOURS:
            raise ConstraintError(f"no {colours[0]!r} keep-out zone: keep-out zones are {', '.join(TRAIN_COLOURS)}")
        return KeepOut(colours[0])
    contact = negated and (has(*_CONTACT) or has(*_AWAY))
    if contact or has(*_GENTLE):
        force = 0.0 if contact else Fragile().force
        if objects:
            colour, shape = objects[0]
            shape = shape[:-1] if shape.endswith("s") and shape[:-1] in SHAPES else shape
            if colour not in COLOURS:
                raise ConstraintError(f"no {colour!r} objects: colours are {', '.join(COLOURS)}")
            return Fragile(colour, shape, force)
        if has("other objects", "the objects", "other things", "anything else", "the others"):
            return Fragile(force=force)
        raise ConstraintError(f"name the fragile object by colour and shape ({', '.join(SHAPES)}), e.g. 'the red ball', or say 'the other objects'")
    speed = _number_before(words, tuple(_SPEED_UNITS))
    if speed is not None and has("below", "under", "at most", "slower than", "less than", "no faster than", "max", "maximum", "limit"):
        value, unit = speed
        if value <= 0:
            raise ConstraintError("a speed limit must be above 0")
        return SpeedLimit(value * _SPEED_UNITS[unit])
    if has(*_SLOW):
        return SpeedLimit(SLOW_SPEED)
    if "workspace" in words or (has("stay", "keep", "remain") and has(*_CENTRE)):
        dist = _number_before(words, ("cm", "m", "mm"))
        if dist is None:
            return Workspace()
        value = dist[0] * {"cm": 0.01, "m": 1.0, "mm": 0.001}[dist[1]]
        if not 0 < value <= 0.4:
            raise ConstraintError(f"the workspace reaches at most 40 cm from the centre (the walls), got {value * 100:g} cm")
        return Workspace(value)
    raise ConstraintError("the constraint fits none the suite has: keep-out zones, fragile objects, a speed limit, workspace bounds")


def supported_constraints() -> list[str]:
    """Every phrasing :data:`PHRASINGS` produces over the training colours and shapes (for suggestions)."""
    out: list[str] = []
    for options in PHRASINGS.values():
        for p in options:
            if "{shape}" in p:
                out += [p.format(colour=c, shape=s) for c in TRAIN_COLOURS for s in SHAPES]
            elif "{colour}" in p:
                out += [p.format(colour=c) for c in TRAIN_COLOURS]
            else:
                out.append(p)
    return out
