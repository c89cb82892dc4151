"""Instruction vocabulary of the tabletop suite: colours, shapes, templates and their splits.

Every family has training templates and held-out paraphrases (never used to collect training
data), and some colour x shape x family combinations are held out as compositions. These
lists are the one place the splits live; ``embodied envs list`` and evaluation read them.
"""

from __future__ import annotations

import re
from typing import Final, Literal, NamedTuple

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
            "approach the {obj}",
            "head over to the {obj}",
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
            "drag the {obj} into the {zone} square",
            "bring the {obj} over to the {zone} patch",
            "place the {obj} on the {zone} spot",
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
            "drag the {obj} to the {dir}",
            "bring the {obj} over to the {dir} edge",
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


# ---------------------------------------------------------------------------- understanding instructions
class Task(NamedTuple):
    """What an instruction asks: the family, the target object, and the zone colour or direction."""

    family: str
    colour: str
    shape: str
    zone: str = ""
    direction: str = ""


_WORD = re.compile(r"[a-z]+")
_ZONE_WORDS = ("zone", "area", "square", "patch", "spot", "region", "target")
_REACH_WORDS = ("touch", "reach", "tap", "fingertip", "go to", "move to", "go and")


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{obj\}|\{zone\}|\{dir\})", template)
    out = []
    for p in parts:
        if p == "{obj}":
            out.append(r"(?P<colour>[a-z]+) (?P<shape>[a-z]+)")
        elif p == "{zone}":
            out.append(r"(?P<zone>[a-z]+)")
        elif p == "{dir}":
            out.append(r"(?P<dir>[a-z]+)")
        else:
            out.append(re.escape(p))
    return re.compile("^" + "".join(out) + "$")


_PATTERNS: Final[list[tuple[str, re.Pattern[str]]]] = [
    (family, _template_regex(t)) for family in FAMILIES for t in templates(family, "all")
]


def normalize(text: str) -> str:
    """Lower case, words only, single spaces ("Push the RED cube!" -> "push the red cube")."""
    return " ".join(_WORD.findall(text.lower()))


class InstructionError(ValueError):
    """An instruction that names something the suite lacks, or fits no task family."""


def parse_instruction(text: str) -> Task:
    """The task an instruction asks for, or :class:`InstructionError` saying what is missing or unknown.

    Exact template matches first (training templates and paraphrases); otherwise the words
    are read: an object ("<colour> <shape>"), then a zone ("<colour>" before one of ``_ZONE_WORDS``)
    means push_zone, a direction word means push_dir, a reaching verb means reach.
    """
    if not isinstance(text, str):
        raise InstructionError("an instruction is a string")
    norm = normalize(text[:500])
    if not norm:
        raise InstructionError("the instruction is empty")
    for family, pattern in _PATTERNS:
        m = pattern.match(norm)
        if m and m["colour"] in COLOURS and m["shape"] in SHAPES:
            g = m.groupdict()
            zone, direction = g.get("zone") or "", g.get("dir") or ""
            if (not zone or zone in TRAIN_COLOURS) and (not direction or direction in DIRECTIONS):
                return Task(family, m["colour"], m["shape"], zone, direction)
    words = norm.split()
    objects = [(words[i], words[i + 1]) for i in range(len(words) - 1) if words[i + 1] in SHAPES or words[i + 1] in ("cubes", "balls", "cylinders")]
    if not objects:
        unknown = [w for w in words if w not in _KNOWN]
        hint = f" (unknown word{'s' if len(unknown) > 1 else ''}: {', '.join(unknown[:3])})" if unknown else ""
        raise InstructionError(f"the instruction names no object the suite has: objects are a colour and a shape ({', '.join(SHAPES)}){hint}")
    colour, shape = objects[0]
    shape = shape.rstrip("s") if shape.endswith("s") and shape[:-1] in SHAPES else shape
    if colour not in COLOURS:
        raise InstructionError(f"no {colour!r} objects: colours are {', '.join(COLOURS)}")
    zone = next((words[i - 1] for i in range(1, len(words)) if words[i] in _ZONE_WORDS and words[i - 1] in COLOURS), "")
    if any(w in _ZONE_WORDS for w in words) and not zone:
        raise InstructionError(f"name the zone by its colour ({', '.join(TRAIN_COLOURS)}), e.g. 'the green zone'")
    if zone and zone not in TRAIN_COLOURS:
        raise InstructionError(f"no {zone!r} zone: zones are {', '.join(TRAIN_COLOURS)}")
    direction = next((w for w in words if w in DIRECTIONS), "")
    if zone:
        return Task("push_zone", colour, shape, zone=zone)
    if direction:
        return Task("push_dir", colour, shape, direction=direction)
    if any(v in norm for v in _REACH_WORDS):
        return Task("reach", colour, shape)
    raise InstructionError(f"the instruction fits no task: say where the {colour} {shape} should go (a zone or a direction), or to touch it")


_KNOWN: Final[frozenset[str]] = frozenset(
    w for family in FAMILIES for t in templates(family, "all") for w in normalize(t.format(obj="", zone="", dir="")).split()
) | frozenset(COLOURS) | frozenset(SHAPES) | frozenset(DIRECTIONS) | frozenset(_ZONE_WORDS)


def supported_instructions(split: InstructionSplit = "all") -> list[str]:
    """Every instruction the templates of ``split`` produce (for suggestions)."""
    out = []
    for family in FAMILIES:
        for t in templates(family, split):
            for c in COLOURS:
                for s in SHAPES:
                    if "{zone}" in t:
                        out += [render_instruction(t, c, s, zone=z) for z in TRAIN_COLOURS if z != c]
                    elif "{dir}" in t:
                        out += [render_instruction(t, c, s, direction=d) for d in DIRECTIONS]
                    else:
                        out.append(render_instruction(t, c, s))
    return out
