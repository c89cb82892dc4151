"""Frozen dataclass configs of the commands, and the argparse glue that builds the CLI from them.

Each command's options are one frozen dataclass; its fields' docstrings (the string literal
written under a field) become the ``--help`` text, so the documentation lives in one place.
Values given as ``key=value`` pairs are parsed as JSON literals (numbers, booleans, null,
strings), never evaluated.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # source unavailable (frozen app, REPL)
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of the dataclass ``cls`` (``positional`` metadata for positionals)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_ = docs.get(f.name, "")
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        optional = type(None) in args
        if optional:
            tp = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(tp), typing.get_args(tp)
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": f"{help_} (default: {default})" if default not in ((), None) else help_}
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
            continue
        if origin is tuple:
            kwargs.update(nargs="*" if f.metadata.get("positional") else "+", type=args[0], default=default)
        else:
            kwargs.update(type=tp, default=default)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata.get("positional"):
            if origin is not tuple and f.default is dataclasses.MISSING:
                kwargs.pop("default")
            elif origin is not tuple:
                kwargs["nargs"] = "?"
            parser.add_argument(f.name, metavar=f.metadata.get("metavar", f.name.upper()), **kwargs)
        else:
            if origin is tuple:
                kwargs["action"] = "extend"
                kwargs["default"] = None
            parser.add_argument(flag, dest=f.name, metavar=f.metadata.get("metavar"), **kwargs)


def from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Build the frozen config ``cls`` from parsed arguments (tuples for list options)."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        v = getattr(ns, f.name)
        if isinstance(v, list):
            v = tuple(v)
        if v is None and isinstance(f.default, tuple):  # an "extend" option never given
            v = f.default
        values[f.name] = v
    return cls(**values)


def parse_kv(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("pixels=64", "layout=rows")`` -> ``{"pixels": 64, "layout": "rows"}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got {p!r} (for example --kw pixels=64)")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


# ---------------------------------------------------------------------------- command configs
@dataclass(frozen=True)
class EnvsListConfig:
    split: str | None = field(default=None, metadata={"choices": ("train", "heldout")})
    """Only list environments of this split."""
    json: bool = False
    """Print a JSON list instead of one line per environment."""


@dataclass(frozen=True)
class EnvsCheckConfig:
    ids: tuple[str, ...] = field(default=(), metadata={"positional": True, "metavar": "ID"})
    """Environment ids to check (default: every registered id)."""
    episodes: int = 20
    """Expert episodes per environment for the success rate."""
    seed: int = 0
    """First seed of the expert episodes."""
    kw: tuple[str, ...] = field(default=(), metadata={"metavar": "KEY=VALUE"})
    """Extra env keyword arguments, e.g. --kw pixels=64 control=joint."""
    json: bool = False
    """Print a JSON list of results."""


@dataclass(frozen=True)
class EnvsVideoConfig:
    id: str = field(default="embodied/PointPushZone-v0", metadata={"positional": True, "metavar": "ID"})
    """Environment id to film."""
    out: str = "expert.mp4"
    """Output H.264 MP4 file."""
    episodes: int = 1
    """Expert episodes to film back to back."""
    seed: int = 0
    """Seed of the first episode."""
    size: int = 256
    """Frame width and height in pixels."""
    noise: float = 0.0
    """Expert action noise (0 = the noiseless expert)."""
    kw: tuple[str, ...] = field(default=(), metadata={"metavar": "KEY=VALUE"})
    """Extra env keyword arguments, e.g. --kw layout=rows."""


@dataclass(frozen=True)
class BenchEnvsConfig:
    seconds: float = 2.0
    """Timed seconds per measurement (split into repeats; medians are reported)."""
    repeats: int = 5
    """Timed windows per measurement."""
    json: bool = False
    """Print JSON instead of a table."""


@dataclass(frozen=True)
class DemoConfig:
    out: str = "out/demo"
    """Folder for the demo's results (JSON, videos)."""
    episodes: int = 100
    """Expert episodes per environment in the suite check."""
    force: bool = False
    """Redo every step even when its results already exist."""
