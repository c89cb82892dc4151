"""Dataset tools over episode stores: info, verify, repair, merge, split, filter, delete, datasheet.

Every tool that writes makes a new store (never overwriting one) and streams episode by
episode, so stores larger than memory are fine. Copies keep each episode exactly as it
was: its metadata, and only the features it has (an actionless video import stays
actionless, a final observation without an action keeps no action). The ``embodied data``
commands are thin wrappers over these functions.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from embodied import specs

from .files import StoreFiles, StoreLockedError
from .store import CorruptEpisodeError, EpisodeStore, StoreError

__all__ = [
    "info",
    "verify",
    "repair",
    "copy_episodes",
    "merge",
    "split",
    "filter_store",
    "select",
    "EpisodeFilter",
    "select_by_source",
    "delete_plan",
    "datasheet",
    "SPLIT_BY",
]

SPLIT_BY = ("episode", "instruction", "env")
_FIXED_ATTRS = ("schema_version", "features", "chunk_len", "control_hz", "provenance")


def _counts(values: Iterable[Any]) -> dict[str, int]:
    """Value -> count, sorted by value (JSON-stable)."""
    c = Counter("" if v is None else str(v) for v in values)
    return {k: c[k] for k in sorted(c)}


def _feature_bytes(store: EpisodeStore, name: str) -> int:
    f = store.features[name]
    return math.prod(f.shape) * np.dtype(f.dtype).itemsize


# ---------------------------------------------------------------------------- info
def info(store: EpisodeStore) -> dict[str, Any]:
    """A summary of ``store``: counts, features, per-instruction/env/source counts, bytes, provenance."""
    recs = [store.record(i) for i in range(len(store))]
    metas = [r["meta"] for r in recs]
    lengths = [int(r["length"]) for r in recs]
    frames = sum(lengths)
    present = {k: sum(int(r["present"].get(k, 0)) for r in recs) for k in store.features}
    raw = sum(n * _feature_bytes(store, k) for k, n in present.items())
    stored = store.nbytes_stored()
    valid = sum(1 for m in metas if m.get(specs.VALID, True))
    return {
        "url": store.url,
        "episodes": len(recs),
        "valid": valid,
        "invalid": len(recs) - valid,
        "success": sum(1 for m in metas if m.get(specs.SUCCESS) is True),
        "with_actions": sum(1 for m in metas if m.get("has_actions")),
        "steps": frames,
        "frames_with_actions": present.get(specs.ACTION, 0),
        "duration_s": frames / store.control_hz if store.control_hz else None,
        "length": {"min": min(lengths), "mean": frames / len(lengths), "max": max(lengths)} if lengths else None,
        "features": {k: {"shape": list(f.shape), "dtype": f.dtype, "observation": f.observation, "frames": present[k]} for k, f in store.features.items()},
        "instructions": _counts(m.get(specs.INSTRUCTION, "") for m in metas),
        "envs": _counts(m.get("env_id", "") for m in metas),
        "sources": _counts(m.get("source", "") for m in metas),
        "policies": _counts(m.get("policy", "") for m in metas),
        "bytes_stored": stored,
        "bytes_total": sum(store.files.walk("").values()),
        "bytes_raw": raw,
        "compression_ratio": raw / stored if stored else None,
        "control_hz": store.control_hz,
        "chunk_len": store.chunk_len,
        "schema_version": store.attrs.get("schema_version"),
        "provenance": store.attrs.get("provenance", {}),
        "attrs": {k: v for k, v in store.attrs.items() if k not in _FIXED_ATTRS},
    }


# ---------------------------------------------------------------------------- verify and repair
def verify(store: EpisodeStore, decode: bool = True) -> dict[str, Any]:
    """Check every chunk of every episode (see :meth:`EpisodeStore.verify`); adds the counts checked."""
    problems = store.verify(decode=decode)
    chunks = sum(len(keys) for i in range(len(store)) for keys in store.chunk_keys(i).values())
    return {"url": store.url, "ok": not problems, "episodes": len(store), "chunks": chunks, "damaged": problems}


def _damaged_records(files: StoreFiles) -> list[str]:
    """Commit records that are not readable JSON (a store with one cannot be opened)."""
    from .store import RECORDS

    bad = []
    for name in files.names(RECORDS):
        if not (name.endswith(".json") and name[:10].isdigit()):
            continue
        try:
            rec = files.read_json(f"{RECORDS}/{name}")
            if not isinstance(rec, dict) or not {"uid", "start", "length", "present", "meta"} <= rec.keys():
                bad.append(name)
        except FileNotFoundError:
            continue
        except ValueError:
            bad.append(name)
    return bad


def repair(url: str | os.PathLike[str], drop_damaged: bool = False, break_lock: bool = False) -> dict[str, Any]:
    """Repair the store at ``url``: trim what a crashed writer left, rebuild index and statistics.

    ``drop_damaged`` also removes the episodes with damaged chunks or commit records (their
    bytes too); without it damaged episodes are reported and kept. ``break_lock`` removes
    a lock left by a writer that is gone (object stores; a local lock frees itself).
    """
    from .store import RECORDS

    url = str(url)
    files = StoreFiles(url)
    if not files.exists("zarr.json"):
        EpisodeStore.open(url)  # raises the store's own "no episode store" error
    if break_lock:
        files.break_lock()
        if files.local:
            try:
                with files.locked():
                    pass
            except StoreLockedError as e:
                raise StoreLockedError(f"{e} (--break-lock cannot free a local lock: the kernel holds it for a writer that is still running; stop that writer)") from None
    bad_records = _damaged_records(files)
    if bad_records and not drop_damaged:
        raise CorruptEpisodeError(
            f"{url} has {len(bad_records)} damaged commit record(s) ({', '.join(bad_records[:3])}{', ...' if len(bad_records) > 3 else ''}); "
            f"their episodes cannot be read: run `embodied data repair {url} --drop-damaged` to remove them"
        )
    if bad_records:
        with files.locked():
            for name in bad_records:
                files.delete(f"{RECORDS}/{name}")
    with EpisodeStore.open(url, mode="a") as store:
        trimmed = dict(getattr(store, "trimmed", {}) or {})
        out = store.repair(drop_damaged=drop_damaged)
    for k in ("chunks", "temp_files"):
        out[k] = int(out.get(k, 0)) + int(trimmed.get(k, 0))
    out["dropped"] = int(out["dropped"]) + len(bad_records)
    out["damaged"] = int(out["damaged"]) + len(bad_records)
    out["damaged_records"] = bad_records
    out.setdefault("problems", [])
    return out


# ---------------------------------------------------------------------------- copying
def _check_writable_path(url: str) -> None:
    if StoreFiles(url).exists(""):
        raise StoreError(f"{url} already exists; choose a new output path (data tools never overwrite a store)")


class _NewStore:
    """Create an output store like ``like``; on an error, remove what was written."""

    def __init__(self, url: str | os.PathLike[str], like: EpisodeStore, provenance: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> None:
        self.url = str(url)
        _check_writable_path(self.url)
        self.store = EpisodeStore.create(self.url, like.features, control_hz=like.control_hz, chunk_len=like.chunk_len, provenance=provenance)
        for k, v in (attrs if attrs is not None else {k: v for k, v in like.attrs.items() if k not in _FIXED_ATTRS}).items():
            self.store.set_attr(k, v)

    def __enter__(self) -> EpisodeStore:
        return self.store

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.store.close()
        if exc_type is not None:
            self.store.files.remove_all()


def _provenance(operation: str, srcs: Sequence[EpisodeStore], **extra: Any) -> dict[str, Any]:
    return {
        "operation": operation,
        "derived_from": [{"url": s.url, "episodes": len(s), "provenance": s.attrs.get("provenance", {})} for s in srcs],
        **extra,
    }


def copy_episodes(
    src: EpisodeStore,
    dst: EpisodeStore,
    indices: Iterable[int],
    meta_update: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append episodes ``indices`` of ``src`` to ``dst``, one at a time; returns how many.

    Each copy keeps exactly the frames its original has of each feature (absent features
    stay absent) and its metadata (plus ``meta_update``); ``dst`` recomputes ``length``,
    ``has_actions`` and the commit time. A damaged episode raises :class:`CorruptEpisodeError`.
    """
    missing = sorted(set(src.features) - set(dst.features))
    if missing:
        raise StoreError(f"{dst.url} has no feature(s) {missing} that {src.url} stores")
    diff = [k for k in src.features if src.features[k] != dst.features[k]]
    if diff:
        raise StoreError(f"feature(s) {diff} differ between {src.url} and {dst.url}: {[(src.features[k], dst.features[k]) for k in diff]}")
    n = 0
    for i in indices:
        rec = src.record(i)
        bad = src.episode_problems(i, decode=False)  # a truncated Blosc chunk would decode to garbage
        if bad:
            raise CorruptEpisodeError(
                f"episode {i} (uid {rec['uid']}) of {src.url} is damaged: {', '.join(bad)}; "
                f"run `embodied data repair {src.url} --drop-damaged` first"
            )
        keys = [k for k, m in rec["present"].items() if int(m) > 0]
        data = src.episode(i, keys=keys)
        steps = {k: data[k][: int(rec["present"][k])] for k in keys}
        meta = dict(rec["meta"])
        for k in ("length", "has_actions", "committed"):
            meta.pop(k, None)
        meta.update(meta_update or {})
        dst.add_episode(steps, meta)
        n += 1
        if progress:
            progress(n)
    return n


def merge(srcs: Sequence[EpisodeStore], out: str | os.PathLike[str], progress: Callable[[int], None] | None = None) -> int:
    """Write every episode of ``srcs`` (in order) to a new store ``out``; returns how many.

    The stores must have the same features and control rate. Each copied episode's meta
    gets ``merged_from`` (its store's URL); the new store's attributes list the sources.
    """
    if not srcs:
        raise StoreError("merge needs at least one store")
    first = srcs[0]
    for s in srcs[1:]:
        if s.features != first.features:
            a, b = set(first.features), set(s.features)
            what = f"features {sorted(a ^ b)} are in only one of them" if a != b else f"features {[k for k in a if first.features[k] != s.features[k]]} differ in shape or dtype"
            raise StoreError(f"cannot merge {s.url} into {first.url}: {what}; merge needs stores with the same features")
        if s.control_hz != first.control_hz:
            raise StoreError(f"cannot merge {s.url} ({s.control_hz} Hz) with {first.url} ({first.control_hz} Hz): control rates differ")
    attrs = {k: v for k, v in first.attrs.items() if k not in _FIXED_ATTRS and all(s.attrs.get(k) == v for s in srcs)}
    attrs["merged_from"] = [{"url": s.url, "episodes": len(s)} for s in srcs]
    done = 0
    with _NewStore(out, first, _provenance("merge", srcs), attrs) as dst:
        for s in srcs:
            done += copy_episodes(s, dst, range(len(s)), {"merged_from": s.url}, progress=(lambda k, d=done: progress(d + k)) if progress else None)
    return done


def _fractions(fractions: Sequence[float], n_outs: int) -> list[float]:
    fr = [float(f) for f in fractions]
    if n_outs < 1:
        raise StoreError("split needs at least one output")
    if not fr:
        return [1.0 / n_outs] * n_outs
    if any(not (0.0 < f <= 1.0) for f in fr):
        raise StoreError(f"split fractions must lie in (0, 1], got {fr}")
    if len(fr) == n_outs - 1:
        rest = 1.0 - sum(fr)
        if rest <= 1e-9:
            raise StoreError(f"split fractions {fr} leave nothing for the last of {n_outs} outputs")
        return [*fr, rest]
    if len(fr) != n_outs:
        raise StoreError(f"give {n_outs} fractions (or {n_outs - 1}, the last output takes the rest) for {n_outs} outputs, got {len(fr)}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise StoreError(f"split fractions must sum to 1, got {fr} (sum {sum(fr):g})")
    return fr


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` units into counts proportional to ``fractions`` (largest remainder), none empty if possible."""
    exact = [f * n for f in fractions]
    counts = [int(math.floor(x)) for x in exact]
    for j in sorted(range(len(exact)), key=lambda j: (counts[j] - exact[j], j))[: n - sum(counts)]:
        counts[j] += 1
    for j in range(len(counts)):  # no empty output while another has more than one unit
        if counts[j] == 0:
            big = max(range(len(counts)), key=lambda k: counts[k])
            if counts[big] > 1:
                counts[big] -= 1
                counts[j] += 1
    return counts


def split_indices(store: EpisodeStore, fractions: Sequence[float], seed: int = 0, by: str = "episode") -> list[list[int]]:
    """The episode indices of each part of a deterministic random split (see :func:`split`)."""
    if by not in SPLIT_BY:
        raise StoreError(f"split by must be one of {SPLIT_BY}, got {by!r}")
    fr = list(fractions)
    key = {"episode": None, "instruction": specs.INSTRUCTION, "env": "env_id"}[by]
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(store.metas()):
        groups.setdefault(str(i) if key is None else str(m.get(key, "")), []).append(i)
    units = list(groups) if key is None else sorted(groups)
    if len(units) < len(fr):
        raise StoreError(f"{store.url} has {len(units)} {by}{'s' if len(units) != 1 else ''}, too few to split {len(fr)} ways by {by}")
    order = np.random.default_rng(seed).permutation(len(units))
    parts, at = [], 0
    for c in _allocate(len(units), fr):
        parts.append(sorted(i for u in order[at : at + c] for i in groups[units[int(u)]]))
        at += c
    return parts


def split(
    src: EpisodeStore,
    outs: Sequence[str | os.PathLike[str]],
    fractions: Sequence[float] = (),
    seed: int = 0,
    by: str = "episode",
) -> list[list[int]]:
    """Split ``src`` into new stores ``outs`` by a seeded random permutation; returns each part's source indices.

    ``by="episode"`` splits episodes; ``"instruction"`` and ``"env"`` keep every episode of
    one instruction (or environment) in one part, for held-out instructions or envs.
    ``fractions`` has one entry per output (summing to 1), or one fewer (the last output
    takes the rest), or none (equal parts). The same store and seed give the same split.
    """
    outs = [str(o) for o in outs]
    if len(set(outs)) != len(outs):
        raise StoreError(f"split outputs must differ, got {outs}")
    fr = _fractions(fractions, len(outs))
    for o in outs:
        _check_writable_path(o)
    parts = split_indices(src, fr, seed, by)
    written: list[str] = []
    try:
        for o, idx, f in zip(outs, parts, fr):
            with _NewStore(o, src, _provenance("split", [src], split={"by": by, "seed": seed, "fractions": fr, "fraction": f, "outputs": outs})) as dst:
                copy_episodes(src, dst, idx)
            written.append(o)
    except BaseException:  # all parts or none
        for o in written:
            StoreFiles(o).remove_all()
        raise
    return parts


def _match(value: Any, patterns: str | Sequence[str] | None) -> bool:
    if patterns is None:
        return True
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    if not pats:
        return True
    v = "" if value is None else str(value)
    return any(fnmatch.fnmatchcase(v, p) for p in pats)


@dataclass(frozen=True)
class EpisodeFilter:
    """Conditions on episode metadata; an episode matches when it meets every condition given.

    ``env``, ``instruction``, ``source`` and ``policy`` are shell-style patterns (``*``,
    ``?``; a plain string matches exactly), or tuples of them (any may match).
    """

    env: str | tuple[str, ...] | None = None
    instruction: str | tuple[str, ...] | None = None
    source: str | tuple[str, ...] | None = None
    policy: str | tuple[str, ...] | None = None
    valid_only: bool = False
    success: bool | None = None
    has_actions: bool | None = None

    def matches(self, m: Mapping[str, Any]) -> bool:
        return (
            _match(m.get("env_id"), self.env)
            and _match(m.get(specs.INSTRUCTION), self.instruction)
            and _match(m.get("source"), self.source)
            and _match(m.get("policy"), self.policy)
            and not (self.valid_only and not m.get(specs.VALID, True))
            and (self.success is None or bool(m.get(specs.SUCCESS, False)) == self.success)
            and (self.has_actions is None or bool(m.get("has_actions", False)) == self.has_actions)
        )

    def given(self) -> dict[str, Any]:
        """The conditions set (for messages and provenance)."""
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self) if (v := getattr(self, f.name)) not in (None, False, ())}


def select(store: EpisodeStore, flt: EpisodeFilter) -> list[int]:
    """Indices of the episodes of ``store`` that ``flt`` matches."""
    return [i for i, m in enumerate(store.metas()) if flt.matches(m)]


def filter_store(src: EpisodeStore, out: str | os.PathLike[str], flt: EpisodeFilter) -> list[int]:
    """Copy the episodes of ``src`` that ``flt`` matches to a new store ``out``; returns their indices."""
    idx = select(src, flt)
    given = flt.given()
    if not idx:
        raise StoreError(f"no episode of {src.url} matches {given or 'the filter'}; nothing written")
    with _NewStore(out, src, _provenance("filter", [src], filter=given)) as dst:
        copy_episodes(src, dst, idx)
    return idx


# ---------------------------------------------------------------------------- delete
def select_by_source(store: EpisodeStore, source: str) -> list[int]:
    """Indices of the episodes whose meta ``source`` is exactly ``source`` (a contributor's data)."""
    return [i for i, m in enumerate(store.metas()) if str(m.get("source", "")) == source]


def delete_plan(store: EpisodeStore, episodes: Sequence[int] = (), sources: Sequence[str] = ()) -> list[dict[str, Any]]:
    """What deleting ``episodes`` and every episode of ``sources`` removes: one dict per episode, with its bytes."""
    n = len(store)
    idx: set[int] = set()
    for i in episodes:
        if not -n <= int(i) < n:
            raise StoreError(f"episode {i} out of range: {store.url} has {n} episodes (0..{n - 1})")
        idx.add(int(i) % n)
    for s in sources:
        found = select_by_source(store, s)
        if not found:
            have = ", ".join(f"{k or '(none)'} ({v})" for k, v in _counts(m.get("source", "") for m in store.metas()).items())
            raise StoreError(f"no episode of {store.url} has source {s!r}; sources there: {have or 'none'}")
        idx.update(found)
    sizes = store.files.walk("data")
    plan = []
    for i in sorted(idx):
        rec = store.record(i)
        keys = [k for ks in store.chunk_keys(i).values() for k in ks]
        plan.append({
            "episode": i, "uid": rec["uid"], "source": rec["meta"].get("source", ""), "instruction": rec["meta"].get(specs.INSTRUCTION, ""),
            "length": int(rec["length"]), "chunks": keys, "bytes": sum(sizes.get(k, 0) for k in keys),
        })
    return plan


# ---------------------------------------------------------------------------- datasheet
def _ranges(seeds: Iterable[int]) -> str:
    xs = sorted(set(seeds))
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ", ".join(out)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ") if str(s) != "" else "(none)"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return lines


def datasheet(store: EpisodeStore) -> str:
    """A Markdown datasheet of ``store``: composition, collection, provenance, validity, intended use, regeneration."""
    s = info(store)
    metas = store.metas()
    n = s["episodes"]
    name = os.path.basename(store.url.rstrip("/")) or store.url
    pct = (lambda k: f"{100 * k / n:.1f}%") if n else (lambda k: "-")

    def by(key: str, counts: Mapping[str, int]) -> list[str]:
        succ = Counter(str(m.get(key, "")) for m in metas if m.get(specs.SUCCESS) is True)
        val = Counter(str(m.get(key, "")) for m in metas if m.get(specs.VALID, True))
        rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return _table([key, "episodes", "share", "valid", "success"], [(k, c, pct(c), val[k], succ[k]) for k, c in rows])

    prov = s["provenance"]
    L = [
        f"# Datasheet: {name}",
        "",
        f"Episode store `{store.url}` (embodied schema v{s['schema_version']}), written by {prov.get('tool', 'an unknown tool')}"
        + (f" on {prov['created']}" if prov.get("created") else "")
        + ". Generated by `embodied data card`; regenerate it after changing the store.",
        "",
        "## Summary",
        "",
        f"- Episodes: {n} ({s['valid']} valid, {s['invalid']} invalid; {s['success']} successful; {s['with_actions']} with actions)",
        f"- Frames: {s['steps']} ({s['frames_with_actions']} with an action) at {s['control_hz']:g} Hz"
        + (f", {s['duration_s'] / 60:.1f} minutes" if (s["duration_s"] or 0) >= 60 else f", {s['duration_s']:.1f} seconds" if s["duration_s"] is not None else ""),
    ]
    if s["length"]:
        L.append(f"- Episode length: min {s['length']['min']}, mean {s['length']['mean']:.1f}, max {s['length']['max']} frames")
    ratio = f", {s['compression_ratio']:.1f}x smaller than raw {_human_bytes(s['bytes_raw'])}" if s["compression_ratio"] else ""
    L += [
        f"- Size: {_human_bytes(s['bytes_total'])} on storage ({_human_bytes(s['bytes_stored'])} of compressed arrays{ratio})",
        f"- Distinct: {len(s['sources'])} sources, {len(s['envs'])} environments, {len(s['instructions'])} instructions, {len(s['policies'])} collection policies",
        "",
        "## Features",
        "",
        *_table(["feature", "kind", "dtype", "shape", "frames"],
                [(k, "observation" if f["observation"] else "action/outcome", f["dtype"], tuple(f["shape"]), f["frames"]) for k, f in s["features"].items()]),
        "",
        "Frame `t` holds the observation at time `t`, the action taken there and its outcome (reward, cost, success). "
        "A feature an episode lacks is not stored and reads as masked (`<feature>_mask`).",
        "",
        "## Sources",
        "",
        "Who or what produced the episodes (meta `source`). A contributor's data can be taken out with "
        f"`embodied data delete {store.url} --source NAME --yes`.",
        "",
        *by("source", s["sources"]),
        "",
        "## Environments",
        "",
        *by("env_id", s["envs"]),
        "",
        "## Collection policies",
        "",
        "`expert` is the scripted expert, `noisy:S` the expert with action noise of scale S, `random` uniform random actions.",
        "",
        *by("policy", s["policies"]),
        "",
        "## Instructions",
        "",
        *by(specs.INSTRUCTION, s["instructions"]),
        "",
        "## Validity",
        "",
        f"- {s['invalid']} of {n} episodes are marked invalid (a MuJoCo divergence ended them, or the collector flagged them). "
        "They stay in the store for inspection but are left out of the normalization statistics; "
        f"`embodied data filter {store.url} --out CLEAN.zarr --valid-only` writes a store without them.",
        f"- {n - s['with_actions']} episodes have no actions (for example imported videos); they serve observation and language "
        "modelling, not behaviour cloning.",
        f"- Integrity: every chunk is checked by `embodied data verify {store.url}`; damaged episodes are removed by "
        f"`embodied data repair {store.url} --drop-damaged`.",
        "",
        "## Provenance",
        "",
        "```json",
        json.dumps(prov, indent=2, sort_keys=True),
        "```",
    ]
    if s["attrs"]:
        L += ["", "Dataset attributes:", "", "```json", json.dumps(s["attrs"], indent=2, sort_keys=True), "```"]
    groups: dict[tuple[str, str, str], list[int]] = {}
    unseeded = 0
    for m in metas:
        if m.get("seed") is None:
            unseeded += 1
            continue
        k = (str(m.get("env_id", "")), json.dumps(m.get("env_kwargs") or {}, sort_keys=True), str(m.get("policy", "")))
        try:
            groups.setdefault(k, []).append(int(m["seed"]))
        except (TypeError, ValueError):
            unseeded += 1
    L += [
        "",
        "## How to regenerate",
        "",
        "Every collected episode is determined by its meta: `env_id`, `env_kwargs`, `seed` and `policy`. "
        "`embodied.collect.regenerate(store.meta(i))` makes the environment, resets it with the seed and re-runs the "
        "policy, giving the same frames bit for bit"
        + (f"; the collection command was `{prov['command']}`" if prov.get("command") else "")
        + ". Seeds per environment and policy:",
        "",
    ]
    if groups:
        L += _table(["env_id", "env_kwargs", "policy", "episodes", "seeds"], [(e, kw, p, len(v), _ranges(v)) for (e, kw, p), v in sorted(groups.items())])
    if unseeded:
        L += ["", f"{unseeded} episodes carry no seed (imported or external data) and cannot be regenerated from seeds."]
    L += [
        "",
        "## Intended use and limitations",
        "",
        "- Intended use: pretraining and adapting the embodied transformer (behaviour cloning, dynamics, reward and cost "
        "models), offline reinforcement learning and few-shot adaptation research on the simulated tabletop suite.",
        "- Simulation only: MuJoCo physics with simplified contacts, rendering and embodiments; policies trained on it are "
        "not validated for physical robots, and its safety costs are no evidence of real-world safety.",
        "- Demonstrations come from scripted and noise-perturbed policies (see Collection policies), not from people; their "
        "behaviour is narrower and more regular than human teleoperation.",
        f"- Language is templated: {len(s['instructions'])} distinct instructions, generated from the task, not written by people; "
        "expect limited generalization to free-form phrasing.",
        "- Class balance follows the tables above; environments, instructions or sources with few episodes are "
        "under-represented, and success labels come from each task's own success test.",
        "",
    ]
    return "\n".join(L)
