"""Instruction vocabulary of the tabletop suite: colours, shapes, templates and their splits.

Every family has training templates and held-out paraphrases (never used to collect training
data), and some colour x shape x family combinations are held out as compositions. These
lists are the one place the splits live; ``embodied envs list`` and evaluation read them.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np

from embodied.specs import SHAPES

COLOURS: Final[dict[str, tuple[float, float, float]]] = {
    "red": (0.85, 0.15, 0.15),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.55, 0.20, 0.75),
    "orange": (1.00, 0.50, 0.05),
    "cyan": (0.10, 0.80, 0.85),
}
"""Colour name -> RGB in [0, 1]. Cyan appears only in held-out (novel) environments."""
TRAIN_COLOURS: Final = ("red", "green", "blue", "yellow", "purple", "orange")
NOVEL_COLOURS: Final = ("cyan",)

DIRECTIONS: Final[dict[str, tuple[float, float]]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "top": (0.0, 1.0),
    "bottom": (0.0, -1.0),
}
"""Direction word -> unit vector in the table frame as seen by the overhead camera."""

Family = Literal["reach", "push_zone", "push_dir"]
FAMILIES: Final[tuple[str, ...]] = ("reach", "push_zone", "push_dir")

TEMPLATES: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "reach": {
        "train": (
            "touch the {obj}",
            "reach the {obj}",
            "move to the {obj}",
        ),
        "paraphrase": (
            "go and tap the {obj}",
            "put your fingertip on the {obj}",
        ),
    },
    "push_zone": {
        "train": (
            "push the {obj} into the {zone} zone",
            "move the {obj} to the {zone} zone",
            "slide the {obj} onto the {zone} area",
        ),
        "paraphrase": (
            "get the {obj} inside the {zone} region",
            "shove the {obj} over to the {zone} target",
        ),
    },
    "push_dir": {
        "train": (
            "push the {obj} to the {dir}",
            "move the {obj} toward the {dir}",
            "slide the {obj} to the {dir} side",
        ),
        "paraphrase": (
            "shift the {obj} over to the {dir}",
            "nudge the {obj} a bit toward the {dir}",
        ),
    },
}
"""Family -> split -> templates. Slots: {obj} ("red cube"), {zone} (a colour), {dir}."""

HELDOUT_COMPOSITIONS: Final[frozenset[tuple[str, str, str]]] = frozenset(
    {
        ("red", "ball", "reach"),
        ("green", "cylinder", "reach"),
        ("blue", "cube", "push_zone"),
        ("orange", "ball", "push_zone"),
        ("yellow", "cylinder", "push_dir"),
        ("purple", "cube", "push_dir"),
    }
)
"""(colour, shape, family) triples never used as a target in training environments."""

InstructionSplit = Literal["train", "paraphrase", "all"]
TargetSplit = Literal["train", "composition", "novel"]


def target_choices(family: str, split: TargetSplit) -> list[tuple[str, str]]:
    """(colour, shape) pairs allowed as the target of ``family`` in a target split.

    ``train``: training colours minus held-out compositions; ``composition``: exactly the
    held-out compositions of this family; ``novel``: held-out compositions plus every shape in
    the novel colours.
    """
    if split == "train":
        return [
            (c, s)
            for c in TRAIN_COLOURS
            for s in SHAPES
            if (c, s, family) not in HELDOUT_COMPOSITIONS
        ]
    held = sorted((c, s) for c, s, f in HELDOUT_COMPOSITIONS if f == family)
    if split == "composition":
        return held
    if split == "novel":
        return held + [(c, s) for c in NOVEL_COLOURS for s in SHAPES]
    raise ValueError(f"unknown target split {split!r}; use train, composition or novel")


def templates(family: str, split: InstructionSplit) -> tuple[str, ...]:
    """The instruction templates of ``family`` in ``split`` (``all`` = train + paraphrase)."""
    if family not in TEMPLATES:
        raise ValueError(f"unknown task family {family!r}; use one of {', '.join(FAMILIES)}")
    t = TEMPLATES[family]
    if split == "all":
        return t["train"] + t["paraphrase"]
    if split not in t:
        raise ValueError(f"unknown instruction split {split!r}; use train, paraphrase or all")
    return t[split]


def render_instruction(template: str, colour: str, shape: str, zone: str = "", direction: str = "") -> str:
    """Fill a template's slots: ``{obj}`` = "colour shape", ``{zone}``, ``{dir}``."""
    return template.format(obj=f"{colour} {shape}", zone=zone, dir=direction)


def sample_instruction(
    rng: np.random.Generator,
    family: str,
    split: InstructionSplit,
    colour: str,
    shape: str,
    zone: str = "",
    direction: str = "",
) -> str:
    """Draw a template of ``family`` from ``split`` and fill it."""
    options = templates(family, split)
    return render_instruction(options[int(rng.integers(len(options)))], colour, shape, zone, direction)
