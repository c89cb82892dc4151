"""The episode store: time-major Zarr v3 arrays, one atomic commit record per episode.

Layout of a store (a folder, or any fsspec URL)::

    D.zarr/
      zarr.json              group attributes: schema version, features, control rate, provenance
      data/<feature>/        one array per feature, time-major, shape (frames, *feature shape),
                             chunked along time (``chunk_len`` frames), Blosc/zstd compressed
      episodes/<uid>-<nonce>.json   commit records: where an episode lies, its metadata
      index.json             a cache of the commit records (rebuilt by writers; never trusted alone)
      stats.json             normalization statistics of the valid episodes, merged incrementally
      writer.lock            who writes (one writer at a time)

Every episode starts on a chunk boundary, so each chunk belongs to exactly one episode and
is written once. An episode is written in three steps: its chunks, then (last, atomically)
its commit record, then the statistics. Readers list the commit records, so a reader sees
an episode only once all its chunks are there; a writer killed at any moment leaves at
most chunks that no record mentions, and the next writer deletes them ("trims the tail").
Deleting an episode removes its record first and its chunks after, so a contributor's
data really leaves the store.

An episode holds ``length`` frames. Frame ``t`` has the observation (``state``,
``pixels``) at time ``t``, the ``action`` taken there and its outcome (``reward``,
``cost``, ``success``). A recorded rollout keeps its final observation as a last frame
without an action. Features an episode lacks (an imported video has no actions) are not
written at all and read as masked: ``present`` in the record says how many leading frames
of each feature exist.
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from embodied import specs
from embodied.errors import EmbodiedError

from .files import StoreFiles, StoreLockedError
from .stats import RunningStats

SCHEMA_VERSION = 1
ATTRS_KEY = "embodied"
DEFAULT_CHUNK_LEN = 64
"""Frames per chunk. 64 frames of 64x64 RGB are 786 KB raw, about 10 KB compressed."""

__all__ = [
    "EpisodeStore",
    "Feature",
    "StoreError",
    "StoreLockedError",
    "CorruptEpisodeError",
    "default_features",
    "SCHEMA_VERSION",
]


class StoreError(EmbodiedError):
    """A store that cannot be opened or written as asked (missing, exists, wrong schema, bad episode)."""


class CorruptEpisodeError(StoreError):
    """An episode whose chunks are missing or damaged."""

    exit_code = 1


# ---------------------------------------------------------------------------- features
@dataclass(frozen=True)
class Feature:
    """One per-frame array of a store: shape of one frame and its dtype."""

    shape: tuple[int, ...]
    dtype: str
    observation: bool = False
    """True for observations (present in every frame); False for actions and outcomes."""

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "observation": self.observation}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Feature":
        return cls(tuple(int(n) for n in d["shape"]), str(d["dtype"]), bool(d.get("observation", False)))

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"

    @property
    def fill_value(self) -> Any:
        return float("nan") if self.is_float else 0


def default_features(pixels: int | None = None, state: bool = True, actions: bool = True, labels: bool = False) -> dict[str, Feature]:
    """The features of a tabletop-suite store: state, optional pixels (size x size RGB), actions and outcomes, and with
    ``labels`` the expert's action at each step (``expert_action``, see :data:`embodied.specs.EXPERT_ACTION`) and each
    cost term of each step (``cost_terms``, :data:`embodied.specs.COST_BY_TERM`)."""
    out: dict[str, Feature] = {}
    if state:
        out[specs.STATE] = Feature((specs.STATE_DIM,), "float32", observation=True)
    if pixels:
        out[specs.PIXELS] = Feature((int(pixels), int(pixels), 3), "uint8", observation=True)
    if actions:
        out[specs.ACTION] = Feature((specs.ACTION_DIM,), "float32")
        if labels:
            out[specs.EXPERT_ACTION] = Feature((specs.ACTION_DIM,), "float32")
        out[specs.REWARD] = Feature((), "float32")
        out[specs.COST] = Feature((), "float32")
        if labels:
            out[specs.COST_BY_TERM] = Feature((len(specs.COST_TERMS),), "float32")
        out[specs.SUCCESS] = Feature((), "bool")
    return out


def _codecs(feature: Feature) -> list[Any]:
    """Blosc zstd level 5 with byte shuffle, then a CRC-32C checksum of the compressed chunk.

    Measured on 273 rendered 64x64 frames in 64-frame chunks (2026-11-26): byte shuffle
    73x smaller and 400 MB/s to write, bit-shuffle only 37x at 250 MB/s; for floats the
    byte shuffle groups exponent bytes. The checksum makes any truncated or flipped chunk
    fail to decode (Blosc alone decodes a truncated chunk into garbage).
    """
    from zarr.codecs import BloscCodec, Crc32cCodec

    return [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle"), Crc32cCodec()]


# ---------------------------------------------------------------------------- records
RECORDS = "episodes"
INDEX = "index.json"
STATS = "stats.json"


def _record_name(uid: int) -> str:
    return f"{uid:010d}-{uuid.uuid4().hex[:8]}.json"


def _uid_of(name: str) -> int:
    return int(name.split("-", 1)[0])


def _jsonable(obj: Any) -> Any:
    """Metadata as plain JSON (numpy scalars and arrays become numbers and lists)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


class EpisodeStore:
    """A Zarr v3 episode store. Open with :meth:`create` or :meth:`open`; use as a context manager.

    ``mode="r"`` opens for reading (any number of readers, also while a writer appends;
    :meth:`refresh` picks up newly committed episodes). ``mode="a"`` makes this handle the
    one writer: it takes the lock and trims whatever a crashed writer left uncommitted.
    """

    def __init__(self, files: StoreFiles, mode: str) -> None:
        import zarr

        self.files = files
        self.url = files.url
        self.mode = mode
        try:
            self._group = zarr.open_group(files.zarr_store(read_only=mode == "r"), mode="r" if mode == "r" else "r+")
        except (ValueError, TypeError, KeyError) as e:  # a damaged zarr.json (JSONDecodeError is a ValueError) or metadata
            raise StoreError(f"{self.url}: its zarr.json is damaged ({type(e).__name__}: {str(e)[:80]}); restore it from a copy "
                             "or re-collect the data") from e
        attrs = dict(self._group.attrs).get(ATTRS_KEY)
        if not attrs:
            raise StoreError(f"{self.url} is a Zarr group but not an embodied episode store (no '{ATTRS_KEY}' attributes)")
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{self.url} has schema version {attrs.get('schema_version')}, this embodied reads version {SCHEMA_VERSION}; "
                "upgrade embodied or re-collect the data"
            )
        self.attrs: dict[str, Any] = attrs
        self.features: dict[str, Feature] = {k: Feature.from_json(v) for k, v in attrs["features"].items()}
        self.chunk_len: int = int(attrs["chunk_len"])
        self.control_hz: float = float(attrs["control_hz"])
        self._arrays: dict[str, Any] = {}
        self._records: list[dict[str, Any]] = []
        self._names: list[str] = []
        self._cache: dict[str, dict[str, Any]] = {}
        self._stats: dict[str, RunningStats] | None = None
        self._stats_names: set[str] = set()
        self._closed = False
        if mode == "a":
            files.acquire_lock()
            try:
                self.refresh()
                self.trimmed = self._trim()
                try:
                    self.stats()  # loaded now so that appends merge into it
                except CorruptEpisodeError:  # a damaged episode must not stop `repair` from opening the store
                    pass
            except BaseException:
                files.release_lock()
                raise
        else:
            self.refresh()

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        url: str | os.PathLike[str],
        features: Mapping[str, Feature | Mapping[str, Any]],
        *,
        control_hz: float = 20.0,
        chunk_len: int = DEFAULT_CHUNK_LEN,
        provenance: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> "EpisodeStore":
        """Create an empty store at ``url`` and open it for writing.

        ``features`` maps names to :class:`Feature` (or its JSON form); ``control_hz`` is the
        frame rate; ``provenance`` (command, source, ...) is stored with the tool version and time.
        """
        import zarr

        from embodied import __version__

        files = StoreFiles(str(url))
        if files.exists(""):
            if not overwrite:
                raise StoreError(f"{url} already exists; open it with mode='a' to add episodes, or choose a new path")
            files.acquire_lock()  # never wipe a store that a live writer holds
            try:
                files.remove_all()
            finally:
                files.release_lock()
        if not features:
            raise StoreError("a store needs at least one feature")
        feats = {k: v if isinstance(v, Feature) else Feature.from_json(v) for k, v in features.items()}
        if chunk_len < 1:
            raise StoreError(f"chunk_len must be >= 1, got {chunk_len}")
        prov = {"tool": f"embodied {__version__}", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **_jsonable(dict(provenance or {}))}
        group = zarr.open_group(files.zarr_store(read_only=False), mode="w")
        for name, f in feats.items():
            group.create_array(
                f"data/{name}",
                shape=(0, *f.shape),
                chunks=(chunk_len, *f.shape),
                dtype=f.dtype,
                fill_value=f.fill_value,
                compressors=_codecs(f),
                config={"write_empty_chunks": True},  # every frame chunk exists, so a missing one means damage
            )
        group.attrs[ATTRS_KEY] = {
            "schema_version": SCHEMA_VERSION,
            "features": {k: f.to_json() for k, f in feats.items()},
            "chunk_len": int(chunk_len),
            "control_hz": float(control_hz),
            "provenance": prov,
        }
        return cls(files, "a")

    @classmethod
    def open(cls, url: str | os.PathLike[str], mode: str = "r") -> "EpisodeStore":
        """Open an existing store for reading (``"r"``) or as its one writer (``"a"``)."""
        if mode not in ("r", "a"):
            raise StoreError(f"mode must be 'r' or 'a', got {mode!r}")
        files = StoreFiles(str(url))
        if not files.exists("zarr.json"):
            raise StoreError(f"no episode store at {url} (no zarr.json there); create one with `embodied collect --out {url}`")
        return cls(files, mode)

    def __enter__(self) -> "EpisodeStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Write the index cache (writers) and give up the lock."""
        if self._closed:
            return
        self._closed = True
        if self.mode == "a":
            try:
                self._write_index()
            finally:
                self.files.release_lock()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "mode", "r") == "a":
            self.files.release_lock()

    # ------------------------------------------------------------------ records
    def refresh(self) -> int:
        """Re-read the committed episodes (readers see appends made since); returns ``len(self)``."""
        names = [n for n in self.files.names(RECORDS) if n.endswith(".json") and n[:10].isdigit()]
        if not self._cache and self.files.exists(INDEX):
            try:
                self._cache = dict(self.files.read_json(INDEX))
            except (ValueError, TypeError):
                self._cache = {}
        records = []
        kept = []
        for name in names:
            rec = self._cache.get(name)
            if rec is None:
                try:
                    rec = self.files.read_json(f"{RECORDS}/{name}")
                except FileNotFoundError:  # deleted between listing and reading
                    continue
                except ValueError as e:
                    raise CorruptEpisodeError(f"commit record {RECORDS}/{name} of {self.url} is damaged ({e}); run `embodied data repair {self.url}`") from e
                self._cache[name] = rec
            records.append(rec)
            kept.append(name)
        self._records, self._names = records, kept
        self._arrays = {}  # shapes may have grown
        return len(records)

    def __len__(self) -> int:
        return len(self._records)

    def _index(self, i: int) -> int:
        n = len(self._records)
        if not -n <= int(i) < n:
            raise IndexError(f"episode {i} out of range: {self.url} has {n} episodes")
        return int(i) % n

    def record(self, i: int) -> dict[str, Any]:
        """The commit record of episode ``i``: uid, start frame, length, present features, meta."""
        return self._records[self._index(i)]

    def meta(self, i: int) -> dict[str, Any]:
        """Metadata of episode ``i`` (instruction, env_id, env_kwargs, seed, policy, source, valid, length, has_actions, ...)."""
        return self.record(i)["meta"]

    def metas(self) -> list[dict[str, Any]]:
        return [r["meta"] for r in self._records]

    @property
    def num_frames(self) -> int:
        return sum(int(r["length"]) for r in self._records)

    def instructions(self) -> list[str]:
        """The distinct instructions of the store, sorted (the index the sampler reports)."""
        return sorted({str(r["meta"].get("instruction", "")) for r in self._records})

    # ------------------------------------------------------------------ arrays
    def array(self, name: str) -> Any:
        if name not in self._arrays:
            if name not in self.features:
                raise KeyError(f"{self.url} has no feature {name!r}; it has {sorted(self.features)}")
            # every frame chunk is written, even all-fill ones, so that a missing chunk always means damage
            self._arrays[name] = self._group[f"data/{name}"].with_config({"write_empty_chunks": True})
        return self._arrays[name]

    def _chunk_key(self, name: str, chunk: int) -> str:
        zeros = "/0" * len(self.features[name].shape)
        return f"data/{name}/c/{chunk}{zeros}"

    def chunk_keys(self, i: int) -> dict[str, list[str]]:
        """Feature -> the chunk keys that hold episode ``i``."""
        rec = self.record(i)
        c0 = int(rec["start"]) // self.chunk_len
        return {
            name: [self._chunk_key(name, c) for c in range(c0, c0 + math.ceil(int(n) / self.chunk_len))]
            for name, n in rec["present"].items()
            if int(n) > 0
        }

    def episode(self, i: int, keys: Iterable[str] | None = None, check: bool = True) -> dict[str, np.ndarray]:
        """Episode ``i`` as feature -> array of ``length`` frames; absent frames are NaN (floats) or 0.

        Also gives ``<feature>_mask`` (bool, per frame) for every non-observation feature.
        A missing or damaged chunk raises :class:`CorruptEpisodeError` instead of returning
        fill values or garbage: missing chunks are looked up first, and a damaged one fails its
        checksum (``check=False`` skips the lookups, for trusted hot loops).
        """
        idx = self._index(i)
        rec = self._records[idx]
        start, length = int(rec["start"]), int(rec["length"])
        names = list(self.features) if keys is None else list(keys)
        if check:
            keys_by_feature = self.chunk_keys(idx)
            for name in names:
                for key in keys_by_feature.get(name, []):  # missing or empty; damage inside fails its checksum on decode
                    size = self._size(key)
                    why = "missing" if size is None else "empty" if size == 0 else None
                    if why is not None:
                        raise CorruptEpisodeError(
                            f"episode {idx} of {self.url} is damaged: chunk {key} ({why}); "
                            f"run `embodied data verify {self.url}` and `embodied data repair {self.url} --drop-damaged`"
                        )
        out: dict[str, np.ndarray] = {}
        for name in names:
            f = self.features[name]
            n = int(rec["present"].get(name, 0))
            if n:
                try:
                    x = np.asarray(self.array(name)[start : start + n])
                except Exception as e:  # a codec or store error: name the episode instead of a bare traceback
                    raise CorruptEpisodeError(
                        f"episode {idx} of {self.url} is damaged: feature {name!r} cannot be decoded ({type(e).__name__}: {e}); "
                        f"run `embodied data verify {self.url}`"
                    ) from e
                if n < length:
                    pad = np.full((length - n, *f.shape), f.fill_value, dtype=f.dtype)
                    x = np.concatenate([x, pad])
            else:
                x = np.full((length, *f.shape), f.fill_value, dtype=f.dtype)
            out[name] = x
            if not f.observation:
                mask = np.zeros(length, dtype=bool)
                mask[:n] = True
                out[f"{name}_mask"] = mask
        return out

    # ------------------------------------------------------------------ writing
    def _require_writer(self) -> None:
        if self.mode != "a" or self._closed:
            raise StoreError(f"{self.url} is open read-only; open it with mode='a' to write")

    @property
    def _end(self) -> int:
        """First free frame: after the last committed episode, rounded up to a chunk."""
        end = 0
        for r in self._records:
            end = max(end, int(r["start"]) + math.ceil(int(r["length"]) / self.chunk_len) * self.chunk_len)
        return end

    def _as_arrays(self, steps: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        if isinstance(steps, Mapping):
            items = dict(steps)
        else:
            steps = list(steps)
            if not steps:
                raise StoreError("an episode needs at least one frame")
            keys = [k for k in steps[0] if k in self.features]
            items = {k: [s[k] for s in steps if k in s] for k in keys}
        unknown = sorted(set(items) - set(self.features) - {specs.INSTRUCTION})
        if unknown:
            raise StoreError(f"unknown feature(s) {unknown}; {self.url} stores {sorted(self.features)}")
        out = {}
        for k, v in items.items():
            if k == specs.INSTRUCTION:
                continue
            f = self.features[k]
            x = np.asarray(v)
            if x.ndim != len(f.shape) + 1 or x.shape[1:] != f.shape:  # a 0-d value has no frames at all
                raise StoreError(f"feature {k!r} must be (frames, *{f.shape}), got an array of shape {x.shape}")
            if np.dtype(f.dtype) == np.bool_ or np.dtype(f.dtype).kind in "ui":
                if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
                    raise StoreError(f"feature {k!r} is {f.dtype} but holds NaN or inf")
            out[k] = x.astype(f.dtype, copy=False)
        return out

    def add_episode(self, steps: Mapping[str, Any] | Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> int:
        """Append one episode and commit it; returns its index.

        ``steps`` is feature -> array (time first), or a list of per-frame dicts. Observation
        features give ``length`` frames; actions and outcomes give ``length`` or ``length - 1``
        (the final observation has no action) or are left out (an actionless episode).
        ``meta`` is stored as given (JSON), completed with ``length``, ``has_actions`` and ``valid``.
        """
        self._require_writer()
        data = self._as_arrays(steps)
        if not data:
            raise StoreError("an episode needs at least one feature")
        lengths = {k: len(v) for k, v in data.items()}
        obs = [k for k in data if self.features[k].observation]
        length = max(lengths[k] for k in obs) if obs else max(lengths.values())
        if length < 1:
            raise StoreError("an episode needs at least one frame")
        for k, n in lengths.items():
            ok = n == length or (not self.features[k].observation and n == length - 1)
            if not ok:
                raise StoreError(f"feature {k!r} has {n} frames, the episode has {length}")
        start = self._end
        needed = start + math.ceil(length / self.chunk_len) * self.chunk_len
        for k, x in data.items():  # 1. the chunks
            arr = self.array(k)
            if arr.shape[0] < needed:  # grow by half at least: one metadata write per many episodes
                arr.resize((max(needed, arr.shape[0] + arr.shape[0] // 2), *arr.shape[1:]))
            if len(x):
                arr[start : start + len(x)] = x
        has_actions = lengths.get(specs.ACTION, 0) > 0
        m = _jsonable(dict(meta or {}))
        m.setdefault(specs.INSTRUCTION, "")
        m.setdefault(specs.VALID, True)
        m.update(length=length, has_actions=has_actions, committed=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        uid = max((int(r["uid"]) for r in self._records), default=-1) + 1
        rec = {"uid": uid, "start": start, "length": length, "present": lengths, "meta": m}
        name = _record_name(uid)
        self.files.write_json(f"{RECORDS}/{name}", rec)  # 2. the commit record, last and atomic
        self._records.append(rec)
        self._names.append(name)
        self._cache[name] = rec
        if self._stats is not None and m[specs.VALID]:  # 3. statistics, incrementally
            self._stats = self._merge_stats(self._stats, data, rec)
            self._stats_names.add(name)
            self._write_stats()
        return len(self._records) - 1

    def set_attr(self, key: str, value: Any) -> None:
        """Set one dataset attribute (under the store's ``embodied`` attributes)."""
        self._require_writer()
        if key in ("schema_version", "features", "chunk_len"):
            raise StoreError(f"attribute {key!r} is fixed when the store is created")
        self.attrs = {**self.attrs, key: _jsonable(value)}
        self._group.attrs[ATTRS_KEY] = self.attrs

    # ------------------------------------------------------------------ statistics
    def _merge_stats(self, stats: dict[str, RunningStats], data: Mapping[str, np.ndarray], rec: Mapping[str, Any]) -> dict[str, RunningStats]:
        out = dict(stats)
        for k, f in self.features.items():
            n = int(rec["present"].get(k, 0))
            if f.is_float and k in data and n:
                x = np.asarray(data[k])[:n]
                out[k] = out.get(k, RunningStats.empty(f.shape)).merge(RunningStats.of(x))
        return out

    def _write_stats(self) -> None:
        self.files.write_json(STATS, {"records": sorted(self._stats_names), "features": {k: s.to_json() for k, s in (self._stats or {}).items()}})

    def stats(self) -> dict[str, RunningStats]:
        """Normalization statistics (per dimension) of every float feature over the valid episodes.

        Read from ``stats.json`` and brought up to date with any committed episode it misses;
        exact after deletions too (recomputed from the data when an episode left).
        """
        valid = {n for n, r in zip(self._names, self._records) if r["meta"].get(specs.VALID, True)}
        if self._stats is None:
            stats: dict[str, RunningStats] = {}
            names: set[str] = set()
            if self.files.exists(STATS):
                try:
                    raw = self.files.read_json(STATS)
                    stats = {k: RunningStats.from_json(v, self.features[k].shape) for k, v in raw["features"].items() if k in self.features}
                    names = set(raw["records"])
                except (ValueError, KeyError, TypeError):
                    stats, names = {}, set()
            if not names <= valid:  # an episode left: start again
                stats, names = {}, set()
            self._stats, self._stats_names = stats, names
        elif not self._stats_names <= valid:  # an episode left since (a reader's refresh): start again
            self._stats = None
            return self.stats()
        missing = [i for i, n in enumerate(self._names) if n in valid and n not in self._stats_names]
        for i in missing:
            rec = self._records[i]
            data = self.episode(i, keys=[k for k, f in self.features.items() if f.is_float])
            self._stats = self._merge_stats(self._stats, data, rec)
            self._stats_names.add(self._names[i])
        if missing and self.mode == "a":
            self._write_stats()
        return dict(self._stats)

    # ------------------------------------------------------------------ maintenance
    def _write_index(self) -> None:
        live = set(self._names)
        self.files.write_json(INDEX, {n: r for n, r in self._cache.items() if n in live})

    def _expected_chunks(self) -> set[str]:
        out: set[str] = set()
        for i in range(len(self._records)):
            for keys in self.chunk_keys(i).values():
                out.update(keys)
        return out

    def _trim(self) -> dict[str, int]:
        """Delete chunks and temporary files that no commit record accounts for; shrink arrays to fit."""
        expected = self._expected_chunks()
        removed = {"chunks": 0, "temp_files": 0}
        for key in self.files.walk("data"):
            if key.endswith(".partial") or ".partial" in key.rsplit("/", 1)[-1]:
                self.files.delete(key)
                removed["temp_files"] += 1
            elif "/c/" in key and key not in expected:
                self.files.delete(key)
                removed["chunks"] += 1
        for key in self.files.walk(RECORDS):
            if key.endswith(".partial"):
                self.files.delete(key)
                removed["temp_files"] += 1
        for name in self.files.names(""):  # stats.json / index.json cut off mid-write
            if name.endswith(".partial"):
                self.files.delete(name)
                removed["temp_files"] += 1
        end = self._end
        for name in self.features:
            arr = self.array(name)
            if arr.shape[0] != end:
                arr.resize((end, *arr.shape[1:]))
        return removed

    def delete(self, indices: Iterable[int]) -> int:
        """Remove episodes (their records first, then their chunks); returns how many were removed."""
        self._require_writer()
        idx = sorted({self._index(i) for i in indices})
        for i in idx:
            self.files.delete(f"{RECORDS}/{self._names[i]}")
        for i in idx:
            for keys in self.chunk_keys(i).values():
                for key in keys:
                    self.files.delete(key)
        gone = {self._names[i] for i in idx}
        keep = [j for j in range(len(self._records)) if j not in set(idx)]
        self._records = [self._records[j] for j in keep]
        self._names = [self._names[j] for j in keep]
        self._cache = {n: r for n, r in self._cache.items() if n not in gone}
        if gone & self._stats_names:
            self._stats, self._stats_names = None, set()
            self.files.delete(STATS)
        self._trim()
        self._write_index()
        return len(idx)

    def verify(self, decode: bool = True) -> list[dict[str, Any]]:
        """Check every chunk of every committed episode; returns one problem dict per damaged episode.

        A chunk is damaged when it is missing, empty, shorter or longer than its Blosc header
        says (a truncated write), or (with ``decode``) fails to decompress.
        Each problem names the episode index, its uid, its instruction and the bad chunks.
        """
        files = self.files.walk("data")
        problems = []
        for i in range(len(self._records)):
            bad = self.episode_problems(i, decode=decode, sizes=files)
            if bad:
                rec = self._records[i]
                problems.append({"episode": i, "uid": rec["uid"], "instruction": rec["meta"].get(specs.INSTRUCTION, ""), "chunks": bad})
        return problems

    def episode_problems(self, i: int, decode: bool = True, sizes: Mapping[str, int] | None = None) -> list[str]:
        """The damaged chunks of episode ``i``, each as ``"<key> (<why>)"``; empty when it is whole.

        ``sizes`` (key -> bytes, as :meth:`StoreFiles.walk` gives) saves a lookup per chunk.
        """
        rec = self.record(i)
        bad: list[str] = []
        for name, keys in self.chunk_keys(i).items():
            n, blosc = int(rec["present"][name]), self._is_blosc(name)
            for j, key in enumerate(keys):
                why = self._chunk_problem(name, key, sizes.get(key) if sizes is not None else self._size(key), blosc)
                if why is None and decode:
                    lo = int(rec["start"]) + j * self.chunk_len
                    try:
                        np.asarray(self.array(name)[lo : min(lo + self.chunk_len, int(rec["start"]) + n)])
                    except Exception as e:  # a codec error names the chunk
                        why = f"cannot be decoded: {type(e).__name__}: {str(e)[:100]}"
                if why is not None:
                    bad.append(f"{key} ({why})")
        return bad

    def _size(self, key: str) -> int | None:
        try:
            return os.path.getsize(self.files.path(key)) if self.files.local else int(self.files.fs.size(self.files.path(key)))
        except FileNotFoundError:
            return None

    def _is_blosc(self, name: str) -> bool:
        return any(type(c).__name__ == "BloscCodec" for c in self.array(name).metadata.codecs)

    def _trailer(self, name: str) -> int:
        """Bytes after the Blosc frame in each chunk (4 for the CRC-32C checksum)."""
        return 4 * sum(type(c).__name__ == "Crc32cCodec" for c in self.array(name).metadata.codecs)

    def _chunk_problem(self, name: str, key: str, size: int | None, blosc: bool) -> str | None:
        """Why chunk ``key`` is damaged (missing, empty, truncated), or None.

        Blosc decompresses a truncated chunk without an error (into garbage), so the chunk's
        size is checked against the sizes its 16-byte Blosc header records.
        """
        if size is None:
            return "missing"
        if size == 0:
            return "empty"
        if not blosc:
            return None
        if self.files.local:
            with open(self.files.path(key), "rb") as fh:
                head = fh.read(16)
        else:
            head = bytes(self.files.fs.cat_file(self.files.path(key), start=0, end=16))
        if len(head) < 16:
            return f"truncated: {size} bytes"
        nbytes, _, cbytes = struct.unpack("<III", head[4:16])
        f = self.features[name]
        raw = self.chunk_len * math.prod(f.shape) * np.dtype(f.dtype).itemsize
        expected = cbytes + self._trailer(name)
        if expected != size:
            return f"truncated: {size} bytes, its header says {expected}" if size < expected else f"{size} bytes, its header says {expected}"
        if nbytes != raw:
            return f"header says {nbytes} bytes uncompressed, a chunk of {name!r} has {raw}"
        return None

    def repair(self, drop_damaged: bool = False) -> dict[str, Any]:
        """Trim uncommitted chunks and temp files, rebuild the index and statistics; optionally drop damaged episodes."""
        self._require_writer()
        problems = self.verify()
        dropped = 0
        if drop_damaged and problems:
            dropped = self.delete(p["episode"] for p in problems)
        removed = self._trim()
        self._stats, self._stats_names = None, set()
        self.files.delete(STATS)
        if not drop_damaged and problems:
            damaged = {p["episode"] for p in problems}
            self._stats = {}
            for i in range(len(self._records)):
                if i not in damaged and self._records[i]["meta"].get(specs.VALID, True):
                    rec = self._records[i]
                    self._stats = self._merge_stats(self._stats, self.episode(i, keys=[k for k, f in self.features.items() if f.is_float]), rec)
                    self._stats_names.add(self._names[i])
            self._write_stats()
        else:
            self.stats()
        self._write_index()
        return {"episodes": len(self), "damaged": len(problems), "dropped": dropped, **removed, "problems": [] if drop_damaged else problems}

    def nbytes_stored(self) -> int:
        """Bytes on storage under ``data/`` (compressed chunks and array metadata)."""
        return sum(self.files.walk("data").values())

    # ------------------------------------------------------------------ language embeddings
    # Tables of instruction embeddings, one per sentence encoder, so that training needs no
    # encoder: ``language/<key>-<nonce>`` is a float32 (instructions, dim) array whose
    # attributes list the instructions in row order; the ``language`` dataset attribute maps
    # each key to its current array.

    def _language_pointers(self) -> dict[str, str]:
        """Key -> array name, read fresh from storage (a reader sees tables written since it opened)."""
        try:
            raw = self.files.read_json("zarr.json")
            ptr = raw.get("attributes", {}).get(ATTRS_KEY, {}).get("language", {})
        except (FileNotFoundError, ValueError, AttributeError):
            ptr = self.attrs.get("language", {})
        return {str(k): str(v) for k, v in dict(ptr or {}).items()}

    def embedding_keys(self) -> list[str]:
        """The encoder keys that have an embedding table in this store, sorted."""
        return sorted(self._language_pointers())

    def set_embeddings(self, key: str, instructions: Sequence[str], vectors: np.ndarray, meta: Mapping[str, Any] | None = None) -> None:
        """Store (or replace) the embedding table of encoder ``key``: row ``i`` of ``vectors`` embeds ``instructions[i]``.

        Readers never see half a table: the rows go into a new array ``language/<key>-<nonce>``
        (its attributes hold the instructions, ``dim`` and ``meta``, such as the encoder's
        name), and only then does one write of the store's attributes (``zarr.json``, replaced
        atomically) point ``key`` at it. The replaced table, and any array a killed writer left
        unpointed, is deleted afterwards; a reader that still held the old pointer re-reads it
        (:meth:`embeddings` retries). Writing a new array instead of overwriting rows in place
        costs one table's bytes for a moment and makes the switch a single atomic put.
        """
        import re

        self._require_writer()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", str(key)):
            raise StoreError(f"embedding key {key!r} must be letters, digits, '.', '_' or '-' (see embodied.language.encoder_key)")
        texts = [str(s) for s in instructions]
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != len(texts) or x.shape[1] < 1:
            raise StoreError(f"embeddings must be (instructions, dim) = ({len(texts)}, dim), got an array of shape {x.shape}")
        if len(set(texts)) != len(texts):
            raise StoreError("embedding table lists an instruction twice")
        if not np.all(np.isfinite(x)):
            raise StoreError("embeddings hold NaN or inf")
        name = f"{key}-{uuid.uuid4().hex[:8]}"
        arr = self._group.create_array(
            f"language/{name}",
            shape=x.shape,
            chunks=(max(1, min(len(texts), 4096)), x.shape[1]),
            dtype="float32",
            fill_value=float("nan"),  # a missing chunk reads as NaN, never as a vector
            compressors=_codecs(Feature((x.shape[1],), "float32")),
            config={"write_empty_chunks": True},
            attributes={"instructions": texts, "dim": int(x.shape[1]), "key": str(key), "meta": _jsonable(dict(meta or {}))},
        )
        if len(texts):
            arr[:] = x
        pointers = {**self._language_pointers(), str(key): name}
        self.set_attr("language", pointers)  # the switch: one atomic write of zarr.json
        live = set(pointers.values())
        try:
            stale = [n for n in self._group["language"].array_keys() if n not in live]
        except KeyError:
            stale = []
        for n in stale:
            try:
                del self._group[f"language/{n}"]
            except (KeyError, FileNotFoundError):
                pass

    def embeddings(self, key: str) -> tuple[list[str], np.ndarray] | None:
        """``(instructions, float32 (N, dim) vectors)`` of encoder ``key``, or None when the store has no such table.

        Compare the instructions with :meth:`instructions` to find episodes the table misses.
        """
        for attempt in range(3):
            name = self._language_pointers().get(str(key))
            if name is None:
                return None
            try:
                arr = self._group[f"language/{name}"]
                texts = [str(s) for s in arr.attrs["instructions"]]
                x = np.asarray(arr[:], dtype=np.float32)
            except Exception as e:  # replaced and deleted between reading the pointer and the rows: read again
                if self._language_pointers().get(str(key)) != name:
                    continue
                raise StoreError(f"the {key} embedding table of {self.url} is damaged ({type(e).__name__}: {e}); run `embodied data embed {self.url}` again") from e
            if x.shape[0] != len(texts) or not np.all(np.isfinite(x)):
                if self._language_pointers().get(str(key)) != name:
                    continue
                raise StoreError(f"the {key} embedding table of {self.url} is damaged (missing rows); run `embodied data embed {self.url}` again")
            return texts, x
        raise StoreError(f"the {key} embedding table of {self.url} kept changing while being read; try again")
