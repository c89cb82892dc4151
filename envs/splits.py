"""Every registered environment and its split, in one table.

``train`` environments are where training data is collected. ``heldout`` environments are
the "new environments" of few-shot adaptation and generalisation tests: a held-out layout
(``Rows``), held-out physics (``Heavy``: heavier, slipperier objects), held-out colours and
objects (``Novel``: held-out colour x shape compositions and a colour never seen in
training), a held-out control frame (``Turned``: the robot's velocity command acts turned by
90 degrees, as on a robot mounted turned against the table: a policy must learn it from
demonstrations) and a held-out embodiment (the 3-link arm). ``Hazard`` variants switch the safety
costs on: two keep-out zones, fragile distractors and a fingertip speed limit;
``HazardRows`` (held out) adds workspace bounds in the held-out layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .tasks import FAMILY_REGISTRY

NAMESPACE = "embodied"
VERSION = 0


@dataclass(frozen=True)
class EnvEntry:
    """One registered environment id."""

    id: str
    split: Literal["train", "heldout"]
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int = 100


_EMBODIMENT_NAMES = {"point": "Point", "arm2": "Arm2", "arm3": "Arm3"}
_FAMILY_NAMES = {"reach": "Reach", "push_zone": "PushZone", "push_dir": "PushDir"}
_FAMILY_TEXT = {
    "reach": "touch the named object",
    "push_zone": "push the named object into the named zone",
    "push_dir": "push the named object left, right, to the top or bottom",
}
_EMBODIMENT_TEXT = {"point": "point-mass pusher", "arm2": "2-link arm", "arm3": "3-link arm (held-out embodiment)"}
HAZARDS = dict(hazards=2, fragile=True, speed_limit=0.3)
"""Keyword arguments of the Hazard variants."""
HELDOUT_HAZARDS = dict(layout="rows", **HAZARDS, workspace=0.32)
"""Keyword arguments of the HazardRows variants: a held-out layout, and workspace bounds besides the Hazard costs."""
VARIANTS: dict[str, tuple[Literal["train", "heldout"], dict[str, Any], str]] = {
    "": ("train", {}, ""),
    "Rows": ("heldout", {"layout": "rows"}, "; held-out layout (objects in a row, zones in a row)"),
    "Heavy": ("heldout", {"object_mass": 0.5, "object_friction": 0.35}, "; held-out physics (2.5x mass, slippery)"),
    "Novel": ("heldout", {"target_split": "novel"}, "; held-out colour x shape targets and the unseen colour cyan"),
    "Turned": ("heldout", {"action_turn": 90.0}, "; held-out control frame (the fingertip's velocity command turned 90 degrees)"),
    "Hazard": ("train", HAZARDS, "; keep-out zones, fragile objects and a speed limit"),
    "HazardRows": ("heldout", HELDOUT_HAZARDS, "; held-out layout with keep-out zones, fragile objects, a speed limit and workspace bounds"),
}


def _entries() -> list[EnvEntry]:
    out = []
    for emb, emb_name in _EMBODIMENT_NAMES.items():
        for fam in FAMILY_REGISTRY:
            steps = FAMILY_REGISTRY[fam].max_steps
            for suffix, (split, kwargs, note) in VARIANTS.items():
                if emb == "arm3" and suffix not in ("", "Hazard"):
                    continue  # the held-out embodiment is held out as a whole
                out.append(
                    EnvEntry(
                        id=f"{NAMESPACE}/{emb_name}{_FAMILY_NAMES[fam]}{suffix}-v{VERSION}",
                        split="heldout" if emb == "arm3" else split,
                        description=f"{_EMBODIMENT_TEXT[emb]}: {_FAMILY_TEXT[fam]}{note}",
                        kwargs={"embodiment": emb, "family": fam, **kwargs},
                        max_episode_steps=steps,
                    )
                )
    return out


ENVS: dict[str, EnvEntry] = {e.id: e for e in _entries()}
"""Env id -> entry, train environments first within each embodiment."""


def env_ids(split: str | None = None) -> list[str]:
    """Registered ids, optionally only those of ``split`` (train or heldout)."""
    return [i for i, e in ENVS.items() if split is None or e.split == split]
