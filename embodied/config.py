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
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:  # a field without a default is a required positional
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
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
class BenchDataConfig:
    data: str = "out/bench/data.zarr"
    """Store of rendered 64x64 frames to measure on (collected there on first use)."""
    frames: int = 20_000
    """Frames the store must hold at least."""
    seconds: float = 2.0
    """Timed seconds per repeat of each windows/s measurement."""
    repeats: int = 3
    """Timed repeats per measurement (medians are reported)."""
    workers: int = 2
    """DataLoader worker processes for every windows/s measurement."""
    collect_workers: int = 2
    """Worker processes that collect the store on first use."""
    device: str | None = None
    """Also copy every batch to this torch device inside the timed loop (e.g. cuda); default: host only."""
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


# ---------------------------------------------------------------------------- collect
@dataclass(frozen=True)
class CollectConfig:
    env: tuple[str, ...] = field(default=(), metadata={"metavar": "ID"})
    """Environment id(s); episodes go round-robin over them (repeat --env or list several)."""
    episodes: int = 100
    """Episodes to record (added to what --append finds)."""
    policy: str = "expert"
    """Who acts: expert, noisy:SIGMA (expert plus correlated noise of that scale) or random."""
    out: str = "data/episodes.zarr"
    """The episode store to write (a folder or an fsspec URL)."""
    pixels: int | None = None
    """Also record overhead camera images of this size (64, 84 or 128)."""
    workers: int = 1
    """Worker processes running environments in parallel."""
    append: bool = False
    """Add to an existing store, continuing its episode numbering (resumes an interrupted run)."""
    seed: int = 0
    """Run seed; episode n gets the env seed embodied.specs.collection_seed(seed, n)."""
    kw: tuple[str, ...] = field(default=(), metadata={"metavar": "KEY=VALUE"})
    """Extra env keyword arguments, e.g. --kw layout=rows."""
    source: str = ""
    """Name of who contributed these episodes (default collect:POLICY); `data delete --source` removes by it."""
    json: bool = False
    """Print the summary as JSON."""


# ---------------------------------------------------------------------------- data (episode store tools)
_STORE = {"positional": True, "metavar": "STORE"}


@dataclass(frozen=True)
class DataInfoConfig:
    store: str = field(metadata=_STORE)
    """The episode store (a folder such as D.zarr, or an fsspec URL)."""
    json: bool = False
    """Print a JSON object (episodes, steps, features, per-instruction/env/source counts, bytes, provenance)."""


@dataclass(frozen=True)
class DataVerifyConfig:
    store: str = field(metadata=_STORE)
    """The episode store to check."""
    json: bool = False
    """Print a JSON report instead of one line per damaged episode."""
    decode: bool = True
    """Also decompress every chunk (--no-decode checks only that chunks exist and have their recorded size)."""


@dataclass(frozen=True)
class DataRepairConfig:
    store: str = field(metadata=_STORE)
    """The episode store to repair."""
    drop_damaged: bool = False
    """Remove episodes with damaged or missing chunks (their bytes too) instead of only reporting them."""
    break_lock: bool = False
    """Remove a writer lock left by a writer that is gone (object stores; local locks free themselves)."""


@dataclass(frozen=True)
class DataMergeConfig:
    stores: tuple[str, ...] = field(default=(), metadata=_STORE)
    """Stores to merge, in order (same features and control rate)."""
    out: str = ""
    """The new store to write (must not exist)."""


@dataclass(frozen=True)
class DataSplitConfig:
    store: str = field(metadata=_STORE)
    """The store to split."""
    out: tuple[str, ...] = field(default=(), metadata={"metavar": "OUT"})
    """New stores to write, one per part: --out train.zarr --out val.zarr."""
    fraction: tuple[float, ...] = ()
    """Share of each part, one per --out or one fewer (the last takes the rest); default equal parts."""
    by: str = field(default="episode", metadata={"choices": ("episode", "instruction", "env")})
    """Split episodes, or whole instructions or environments (held-out instructions or envs)."""
    seed: int = 0
    """Seed of the random permutation; the same store and seed give the same split."""


@dataclass(frozen=True)
class DataFilterConfig:
    store: str = field(metadata=_STORE)
    """The store to filter."""
    out: str = ""
    """The new store to write (must not exist)."""
    env: tuple[str, ...] = field(default=(), metadata={"metavar": "PATTERN"})
    """Keep episodes of these env ids (shell patterns such as 'embodied/Arm2*')."""
    instruction: tuple[str, ...] = field(default=(), metadata={"metavar": "PATTERN"})
    """Keep episodes with these instructions (shell patterns)."""
    source: tuple[str, ...] = field(default=(), metadata={"metavar": "PATTERN"})
    """Keep episodes from these sources (shell patterns)."""
    policy: tuple[str, ...] = field(default=(), metadata={"metavar": "PATTERN"})
    """Keep episodes of these collection policies (shell patterns such as 'noisy:*')."""
    valid_only: bool = False
    """Keep only valid episodes."""
    success: bool | None = None
    """Keep only successful (--success) or only failed (--no-success) episodes."""
    has_actions: bool | None = None
    """Keep only episodes with (--has-actions) or without (--no-has-actions) actions."""


@dataclass(frozen=True)
class DataDeleteConfig:
    store: str = field(metadata=_STORE)
    """The store to delete episodes from."""
    episode: tuple[int, ...] = field(default=(), metadata={"metavar": "I"})
    """Indices of episodes to delete (as `embodied data info` and `verify` number them)."""
    source: tuple[str, ...] = field(default=(), metadata={"metavar": "NAME"})
    """Delete every episode whose meta source is exactly NAME (a contributor's data)."""
    yes: bool = False
    """Delete; without it only print what would be removed."""


@dataclass(frozen=True)
class DataCardConfig:
    store: str = field(metadata=_STORE)
    """The store to describe."""
    out: str | None = None
    """Datasheet file to write ('-' prints it; default: STORE's name with .datasheet.md next to a local store, else print)."""


# ---------------------------------------------------------------------------- data: video import / export
@dataclass(frozen=True)
class DataImportVideoConfig:
    paths: tuple[str, ...] = field(default=(), metadata={"positional": True, "metavar": "FILE|FOLDER"})
    """Videos (MP4/AVI/MOV/MKV/WEBM) or folders of PNG/JPEG/BMP images; each becomes one actionless episode."""
    instruction: str | None = None
    """The instruction the videos show (required), e.g. --instruction 'push the red cube into the green zone'."""
    fps: float | None = None
    """Frame rate of the sources (overrides a file's own rate; required for image folders). Frames are resampled to the store's control rate."""
    out: str | None = None
    """The episode store to write (required): created with only a pixels feature when missing, appended to otherwise."""
    size: int | None = None
    """Frame width and height of a new store (default 64); an existing store keeps its own."""
    source: str = "video"
    """The episodes' meta source (who contributed them), e.g. --source lab-videos-2026."""


@dataclass(frozen=True)
class DataExportVideoConfig:
    store: str = field(metadata={"positional": True, "metavar": "STORE"})
    """The episode store to read."""
    episode: int = 0
    """Index of the episode to export (as `embodied data info` numbers them; -1 is the last)."""
    out: str | None = None
    """Output H.264 MP4 (default: STORE's name with -episode<I>.mp4, in the current folder)."""
    fps: float | None = None
    """Frame rate of the video (default: the store's control rate)."""
