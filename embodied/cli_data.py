"""The ``embodied data ...`` commands: inspect, check, repair, reshape and import/export episode stores.

Handlers import the store and its tools lazily (``embodied --help`` stays fast); every user
error is one line (an :class:`~embodied.errors.EmbodiedError`), never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .config import (
    DataCardConfig,
    DataDeleteConfig,
    DataEmbedConfig,
    DataExportVideoConfig,
    DataFilterConfig,
    DataImportVideoConfig,
    DataInfoConfig,
    DataMergeConfig,
    DataRepairConfig,
    DataSplitConfig,
    DataVerifyConfig,
)
from .errors import ConfigError, EmbodiedError

if TYPE_CHECKING:
    import numpy as np


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def print_bench(r: dict[str, Any], as_json: bool, format_result: Any) -> None:
    """A benchmark's result: JSON, or its formatted text followed by one line per missed target."""
    if as_json:
        print_json(r)
        return
    print(format_result(r))
    for m in r.get("missed_targets", []):
        print("target missed:", m)


# ---------------------------------------------------------------------------- data
def _open_store(url: str, mode: str = "r") -> Any:
    """Open an episode store; any failure is the store's one-line error, never a traceback."""
    from embodied.datasets.store import EpisodeStore, StoreError

    try:
        return EpisodeStore.open(url, mode)
    except EmbodiedError:
        raise
    except Exception as e:  # a damaged zarr.json, an unreachable URL, a permission problem
        raise StoreError(f"cannot open the episode store {url}: {type(e).__name__}: {e}") from e


def _os_errors(fn: Callable[[Any], int]) -> Callable[[Any], int]:
    """File-system errors of the data commands (unwritable output, full disk) as one line."""

    def wrapped(cfg: Any) -> int:
        try:
            return fn(cfg)
        except OSError as e:
            raise EmbodiedError(f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}") from e

    wrapped.__name__ = wrapped.__qualname__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _top(counts: dict[str, int], limit: int = 8) -> str:
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k or '(none)'} {v}" for k, v in rows[:limit])
    return text + (f", ... and {len(rows) - limit} more" if len(rows) > limit else "")


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def _damaged_line(p: dict[str, Any]) -> str:
    return f"damaged: episode {p['episode']} (uid {p['uid']}, instruction {p['instruction']!r}): {', '.join(p['chunks'])}"


@_os_errors
def cmd_data_info(cfg: DataInfoConfig) -> int:
    from embodied.datasets.tools import info

    with _open_store(cfg.store) as s:
        r = info(s)
    if cfg.json:
        print_json(r)
        return 0
    dur = f", {r['duration_s']:.1f} s at {r['control_hz']:g} Hz" if r["duration_s"] is not None else ""
    print(f"{r['url']}: {r['episodes']} episodes ({r['valid']} valid, {r['invalid']} invalid, {r['success']} successful), "
          f"{r['steps']} frames ({r['frames_with_actions']} with actions){dur}")
    print("features: " + ", ".join(f"{k} {f['dtype']} {tuple(f['shape'])}" for k, f in r["features"].items()))
    ratio = f", raw {_mb(r['bytes_raw'])}, {r['compression_ratio']:.1f}x" if r["compression_ratio"] else ""
    print(f"bytes: {_mb(r['bytes_stored'])} of arrays{ratio}; {_mb(r['bytes_total'])} in all")
    for key in ("envs", "sources", "policies", "instructions"):
        print(f"{key} ({len(r[key])}): {_top(r[key])}")
    return 0


@_os_errors
def cmd_data_verify(cfg: DataVerifyConfig) -> int:
    from embodied.datasets.tools import verify

    with _open_store(cfg.store) as s:
        r = verify(s, decode=cfg.decode)
    if cfg.json:
        print_json(r)
    elif r["ok"]:
        print(f"ok: {r['episodes']} episodes, {r['chunks']} chunks checked")
    else:
        for p in r["damaged"]:
            print(_damaged_line(p))
        print(f"{len(r['damaged'])} of {r['episodes']} episodes damaged ({r['chunks']} chunks checked); "
              f"remove them with `embodied data repair {cfg.store} --drop-damaged`", file=sys.stderr)
    return 0 if r["ok"] else 1


@_os_errors
def cmd_data_repair(cfg: DataRepairConfig) -> int:
    from embodied.datasets.tools import repair

    r = repair(cfg.store, drop_damaged=cfg.drop_damaged, break_lock=cfg.break_lock)
    for p in r["problems"]:
        print(_damaged_line(p))
    dropped = f"; dropped {r['dropped']} damaged episodes" if r["dropped"] else ""
    print(f"repaired {cfg.store}: {r['episodes']} episodes; removed {r['chunks']} uncommitted chunks and "
          f"{r['temp_files']} temporary files; rebuilt index and statistics{dropped}")
    if r["problems"]:
        print(f"{len(r['problems'])} damaged episodes kept; rerun with --drop-damaged to remove them", file=sys.stderr)
        return 1
    return 0


@_os_errors
def cmd_data_merge(cfg: DataMergeConfig) -> int:
    import contextlib

    from embodied.datasets.tools import merge

    if not cfg.stores:
        raise ConfigError("give the stores to merge: embodied data merge A.zarr B.zarr --out D.zarr")
    if not cfg.out:
        raise ConfigError("give the new store to write with --out D.zarr")
    with contextlib.ExitStack() as stack:
        srcs = [stack.enter_context(_open_store(u)) for u in cfg.stores]
        n = merge(srcs, cfg.out)
    print(f"wrote {cfg.out}: {n} episodes from {len(cfg.stores)} stores")
    return 0


@_os_errors
def cmd_data_split(cfg: DataSplitConfig) -> int:
    from embodied.datasets.tools import split

    if len(cfg.out) < 2:
        raise ConfigError("give two or more new stores: --out train.zarr --out val.zarr")
    with _open_store(cfg.store) as s:
        parts = split(s, cfg.out, cfg.fraction, seed=cfg.seed, by=cfg.by)
        key = {"episode": None, "instruction": "instruction", "env": "env_id"}[cfg.by]
        metas = s.metas()
        for out, idx in zip(cfg.out, parts):
            groups = f" ({len({str(metas[i].get(key, '')) for i in idx})} {cfg.by}s)" if key else ""
            print(f"wrote {out}: {len(idx)} episodes{groups}")
    return 0


@_os_errors
def cmd_data_filter(cfg: DataFilterConfig) -> int:
    from embodied.datasets.tools import EpisodeFilter, filter_store

    if not cfg.out:
        raise ConfigError("give the new store to write with --out D.zarr")
    with _open_store(cfg.store) as s:
        flt = EpisodeFilter(env=cfg.env or None, instruction=cfg.instruction or None, source=cfg.source or None, policy=cfg.policy or None,
                            valid_only=cfg.valid_only, success=cfg.success, has_actions=cfg.has_actions)
        idx = filter_store(s, cfg.out, flt)
        print(f"wrote {cfg.out}: {len(idx)} of {len(s)} episodes")
    return 0


@_os_errors
def cmd_data_delete(cfg: DataDeleteConfig) -> int:
    from embodied.datasets.tools import delete_plan

    if not cfg.episode and not cfg.source:
        raise ConfigError("say what to delete with --episode I ... and/or --source NAME; nothing was removed")
    with _open_store(cfg.store, "a" if cfg.yes else "r") as s:
        plan = delete_plan(s, cfg.episode, cfg.source)
        verb = "remove" if cfg.yes else "would remove"
        for p in plan[:20]:
            print(f"{verb} episode {p['episode']} (uid {p['uid']}, source {p['source'] or '(none)'!s}, "
                  f"instruction {p['instruction']!r}, {p['length']} frames, {len(p['chunks'])} chunks, {p['bytes']} bytes)")
        if len(plan) > 20:
            print(f"... and {len(plan) - 20} more")
        frames, nbytes = sum(p["length"] for p in plan), sum(p["bytes"] for p in plan)
        if not cfg.yes:
            print(f"dry run, nothing removed: add --yes to delete these {len(plan)} episodes ({frames} frames, {nbytes} bytes) from {cfg.store}")
            return 0
        before = s.nbytes_stored()
        s.delete(p["episode"] for p in plan)
        print(f"removed {len(plan)} episodes ({frames} frames, {before - s.nbytes_stored()} bytes) from {cfg.store}; {len(s)} episodes remain")
    return 0


@_os_errors
def cmd_data_card(cfg: DataCardConfig) -> int:
    from embodied.datasets.tools import datasheet

    with _open_store(cfg.store) as s:
        text = datasheet(s)
        out = cfg.out
        if out is None and s.files.local:
            root = Path(s.files.root)
            out = str(root.with_name((root.name[:-5] if root.name.endswith(".zarr") else root.name) + ".datasheet.md"))
    if out is None or out == "-":
        print(text)
    else:
        Path(out).write_text(text)
        print(f"wrote {out}")
    return 0


DATA_COMMANDS: dict[tuple[str, ...], tuple[type, Callable[[Any], int], str]] = {
    ("data", "info"): (DataInfoConfig, cmd_data_info, "episodes, frames, features, per-instruction/env/source counts, bytes"),
    ("data", "verify"): (DataVerifyConfig, cmd_data_verify, "check every chunk; name the damaged episodes (exit 1)"),
    ("data", "repair"): (DataRepairConfig, cmd_data_repair, "trim a crashed writer's leftovers, rebuild index and stats, drop damaged episodes"),
    ("data", "merge"): (DataMergeConfig, cmd_data_merge, "merge stores with the same features into a new store"),
    ("data", "split"): (DataSplitConfig, cmd_data_split, "split a store into new stores by episode, instruction or env"),
    ("data", "filter"): (DataFilterConfig, cmd_data_filter, "copy the episodes matching env/instruction/source/policy/validity"),
    ("data", "delete"): (DataDeleteConfig, cmd_data_delete, "remove episodes by index or by source, bytes included"),
    ("data", "card"): (DataCardConfig, cmd_data_card, "write a Markdown datasheet of a store"),
}


# ---------------------------------------------------------------------------- data: video import / export
@_os_errors
def cmd_data_import_video(cfg: DataImportVideoConfig) -> int:
    import shlex

    from embodied import specs
    from embodied.datasets.files import StoreFiles
    from embodied.datasets.store import EpisodeStore, Feature, StoreError
    from embodied.datasets.video import import_videos, open_sources

    if not cfg.paths:
        raise ConfigError("give at least one video file or image folder to import")
    if not (cfg.instruction or "").strip():
        raise ConfigError("--instruction is required: the goal the videos show, e.g. --instruction 'push the red cube left'")
    if not cfg.out:
        raise ConfigError("--out is required: the episode store to write, e.g. --out videos.zarr")
    if cfg.size is not None and (cfg.size < 16 or cfg.size % 2):
        raise ConfigError(f"--size must be an even number >= 16, got {cfg.size}")
    sources = open_sources(cfg.paths, cfg.fps)  # every source checked before a store is touched
    files = StoreFiles(cfg.out)
    created = False
    if files.exists("zarr.json"):
        store = _open_store(cfg.out, "a")
        shape = store.features.get(specs.PIXELS, Feature((), "uint8")).shape
        if cfg.size is not None and shape[:2] != (cfg.size, cfg.size):
            store.close()
            raise ConfigError(f"{cfg.out} stores {'x'.join(map(str, shape[:2])) or 'no'} pixels, not {cfg.size}x{cfg.size}; leave out --size to use the store's")
    elif files.exists():
        raise StoreError(f"{cfg.out} exists but is not an episode store; choose a new --out")
    else:
        size = cfg.size or 64
        argv = ["embodied", "data", "import-video", *cfg.paths, "--instruction", cfg.instruction, "--out", cfg.out, "--size", str(size), "--source", cfg.source]
        if cfg.fps is not None:
            argv += ["--fps", f"{cfg.fps:g}"]
        pixels = Feature((size, size, 3), "uint8", observation=True)
        store = EpisodeStore.create(cfg.out, {specs.PIXELS: pixels}, control_hz=20.0, provenance={"command": shlex.join(argv), "source": cfg.source})
        created = True
    try:
        with store:
            indices = import_videos(store, sources, cfg.instruction, source=cfg.source)
            frames = sum(int(store.record(i)["length"]) for i in indices)
            h, w = store.features[specs.PIXELS].shape[:2]
            hz, total = store.control_hz, len(store)
    except BaseException:
        if created and len(store) == 0:  # leave no empty store behind
            files.remove_all()
        raise
    span = f"episode {indices[0]}" if len(indices) == 1 else f"episodes {indices[0]}..{indices[-1]}"
    print(f"imported {len(indices)} video(s) into {cfg.out} as {span}: {frames} frames of {w}x{h} at {hz:g} Hz ({total} episodes in the store)")
    return 0


@_os_errors
def cmd_data_export_video(cfg: DataExportVideoConfig) -> int:
    from embodied import specs
    from embodied.datasets.video import export_video

    with _open_store(cfg.store) as store:
        index = cfg.episode + len(store) if -len(store) <= cfg.episode < 0 else cfg.episode  # -1: the last
        out = cfg.out or f"{Path(cfg.store.rstrip('/')).stem}-episode{index}.mp4"
        n = export_video(store, index, out, cfg.fps)
        h, w = store.features[specs.PIXELS].shape[:2]
        fps = cfg.fps or store.control_hz
    print(f"wrote {out}: episode {index} of {cfg.store}, {n} frames of {w}x{h}, H.264 at {fps:g} fps")
    return 0


VIDEO_COMMANDS: dict[tuple[str, ...], tuple[type, Callable[[Any], int], str]] = {
    ("data", "import-video"): (DataImportVideoConfig, cmd_data_import_video, "import MP4/AVI files or image folders as actionless episodes"),
    ("data", "export-video"): (DataExportVideoConfig, cmd_data_export_video, "write an episode's pixels as an H.264 MP4 (plays in browsers)"),
}


# ---------------------------------------------------------------------------- data: language embeddings
def _embed_hint(url: str, encoder: str | None) -> str:
    import shlex

    return f"embodied data embed {shlex.quote(url)}" + (f" --encoder {shlex.quote(str(encoder))}" if encoder else "")


def _sync_embeddings(
    urls: Sequence[str], encoder: str | None, compute: bool, log: Callable[[str], None]
) -> tuple[str, dict[str, np.ndarray], list[dict[str, Any]]]:
    """``ensure_embeddings`` with a report per store: instructions, added (to its table), stored, dim."""
    import contextlib

    import numpy as np

    from embodied.datasets.store import EpisodeStore, StoreError, StoreLockedError
    from embodied.language import EmbeddingsMissingError, EncoderUnavailableError, LanguageEncoder, encoder_key, resolve_encoder

    urls = [str(u) for u in urls]
    if not urls:
        raise ConfigError("give at least one episode store, e.g. embodied data embed D.zarr")
    # 1. read: every store's instructions and its table for this encoder
    with contextlib.ExitStack() as stack:
        stores = [stack.enter_context(_open_store(u)) for u in urls]
        try:
            name, _ = resolve_encoder(encoder)
            key = encoder_key(name)
        except EncoderUnavailableError:  # a folder of another machine, given by the key its tables carry
            if compute or not encoder or not all(encoder in s.embedding_keys() for s in stores):
                raise
            name = key = str(encoder)
        wanted = {u: s.instructions() for u, s in zip(urls, stores)}
        tables = {u: s.embeddings(key) for u, s in zip(urls, stores)}
    vectors: dict[str, np.ndarray] = {}
    dim: int | None = None
    for url, table in tables.items():
        if table is None:
            continue
        texts, x = table
        if dim is not None and x.shape[1] != dim:
            raise StoreError(f"the {key} embeddings of {url} have {x.shape[1]} dimensions, another store's have {dim}; run `{_embed_hint(url, encoder)}` again")
        dim = int(x.shape[1])
        for t, v in zip(texts, x):
            vectors.setdefault(t, v)
    stored = {u: set(tables[u][0]) if tables[u] is not None else set() for u in urls}
    missing = {u: [t for t in wanted[u] if t not in stored[u]] for u in urls}
    lacking = [u for u in urls if missing[u]]
    if lacking and not compute:
        u = lacking[0]
        more = f" (and {len(lacking) - 1} more stores)" if len(lacking) > 1 else ""
        raise EmbeddingsMissingError(
            f"{u} has no {key} embeddings for {len(missing[u])} of its {len(wanted[u])} instructions (e.g. {missing[u][0]!r}){more}; "
            f"run `{_embed_hint(u, encoder)}` where the encoder is installed and use the updated store here"
        )
    # 2. embed what no table has, once
    new = list(dict.fromkeys(t for u in lacking for t in missing[u] if t not in vectors))
    if new:
        enc = LanguageEncoder(encoder)
        x = enc.encode(new)
        if dim is not None and x.shape[1] != dim:
            raise StoreError(f"encoder {name} gives {x.shape[1]} dimensions, the stored {key} tables have {dim}")
        dim = enc.dim
        vectors.update(zip(new, x))
    # 3. store the completed tables (the writer's own view of its table and episodes wins)
    reports = []
    for url in urls:
        rep = {"store": url, "key": key, "encoder": name, "instructions": len(wanted[url]), "added": len(missing[url]), "stored": True, "dim": dim, "note": ""}
        reports.append(rep)
        if not missing[url]:
            continue
        try:
            with EpisodeStore.open(url, "a") as w:
                have = w.embeddings(key)
                texts, rows = (list(have[0]), list(have[1])) if have is not None else ([], [])
                known = set(texts)
                for t in dict.fromkeys([*wanted[url], *w.instructions()]):
                    if t not in known and t in vectors:
                        texts.append(t)
                        known.add(t)
                        rows.append(vectors[t])
                w.set_embeddings(key, texts, np.stack(rows).astype(np.float32), {"encoder": name, "dim": dim})
        except (StoreLockedError, OSError) as e:
            why = "another writer holds it" if isinstance(e, StoreLockedError) else f"it cannot be written ({e.strerror or e})"
            rep.update(stored=False, note=f"not stored: {why}")
            log(f"{url}: embedded {len(missing[url])} instructions with {name} but stored nothing, {why}; run `{_embed_hint(url, encoder)}` later")
    return key, {t: vectors[t] for u in urls for t in wanted[u]}, reports


def ensure_embeddings(
    urls: Sequence[str], encoder: str | None = None, compute: bool = True, log: Callable[[str], None] | None = None
) -> tuple[str, dict[str, np.ndarray]]:
    """``(encoder key, instruction -> unit float32 vector)`` covering every instruction of the stores at ``urls``.

    Stored tables (``language/<key>`` in each store) are used when they cover a store's
    instructions. Otherwise, with ``compute``, the encoder (default all-MiniLM-L6-v2; any
    sentence-transformers name or folder) embeds only what no table has, and the completed
    tables are stored back (a store that another writer holds keeps none: ``log`` says so,
    by default on stderr, and the vectors are returned all the same). Without ``compute``
    (a machine without the encoder) a missing instruction is an
    :class:`~embodied.language.EmbeddingsMissingError` naming the ``embodied data embed``
    command to run where the encoder is installed.
    """
    key, vectors, _ = _sync_embeddings(urls, encoder, compute, log or (lambda m: print(m, file=sys.stderr)))
    return key, vectors


@_os_errors
def cmd_data_embed(cfg: DataEmbedConfig) -> int:
    if not cfg.stores:
        raise ConfigError("give the stores to embed: embodied data embed D.zarr [D2.zarr ...] [--encoder NAME_OR_PATH]")
    _, _, reports = _sync_embeddings(cfg.stores, cfg.encoder, True, log=lambda m: None)
    for r in reports:
        note = f" ({r['note']})" if r["note"] else ""
        print(f"{r['store']}: {r['instructions']} instructions, {r['added']} newly embedded, key {r['key']}, dim {r['dim'] if r['dim'] is not None else '-'}{note}")
    return 0 if all(r["stored"] for r in reports) else 1


DATA_COMMANDS[("data", "embed")] = (DataEmbedConfig, cmd_data_embed, "embed every instruction with a frozen sentence encoder and store the table in the store")
