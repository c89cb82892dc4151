"""Checkpoints: a folder of safetensors + JSON, written atomically, never unpickled.

A checkpoint folder holds:

- ``config.json``: the model configuration (a JSON object, plain JSON).
- ``model.safetensors``: the model's ``state_dict``. Tied tensors (one storage under two
  names) are stored once and recorded as aliases in the file's metadata.
- ``optimizer.safetensors`` + ``optimizer.json`` (when an optimizer state is given): the
  tensors of ``optimizer.state_dict()`` under keys such as ``state/<param_index>/exp_avg``
  and the rest (``param_groups``, integer steps, flags such as ``fused``) as JSON; it loads
  back into the same optimizer class exactly, tensor ``step`` values included.
- ``trainer.json`` (when a scheduler state, RNG state or ``extra`` is given): the scheduler
  ``state_dict``, ``extra`` (step, sampler position, metrics, ...) and the JSON parts of the
  RNG state; ``trainer.safetensors`` holds any tensors found in the scheduler state or
  ``extra``.
- ``rng.safetensors``: the torch CPU generator state and one state per CUDA device.

Non-JSON values inside the optimizer, scheduler and ``extra`` trees are written as small
tagged objects: ``{"__tensor__": key}`` (a tensor in the matching ``.safetensors`` file),
``{"__ndarray__": key}`` (a numpy array stored as a tensor), ``{"__tuple__": [...]}`` and
``{"__dict__": [[key, value], ...]}`` (a dict whose keys are not all strings).

Writes go to a hidden temporary folder next to the target, are flushed to disk, and are
moved into place with :func:`os.replace`; an existing checkpoint at the target is moved
aside first and deleted only after the new one is in place, so a crash never leaves
neither. Loads read only the files above, by name, with :func:`json.loads` and
:mod:`safetensors`; every safetensors header is checked by this module before safetensors
sees the file, so a tampered or truncated file, or a pickle under a safetensors name, is a
one-line :class:`CheckpointError` rather than a crash. Pickle files are never opened.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from safetensors.torch import load_file

from .errors import ConfigError, EmbodiedError

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "capture_rng",
    "config_hash",
    "load_checkpoint",
    "load_tensors",
    "model_hash",
    "read_json",
    "restore_rng",
    "save_checkpoint",
    "save_tensors",
    "write_json",
]

FORMAT = "embodied-checkpoint"
"""Value of the ``format`` field in ``trainer.json``/``optimizer.json`` and in the metadata of
every safetensors file written here."""
VERSION = 1
"""Layout version; a reader refuses a newer one."""

CONFIG = "config.json"
MODEL = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
TRAINER_JSON = "trainer.json"
TRAINER_TENSORS = "trainer.safetensors"
RNG_TENSORS = "rng.safetensors"
KNOWN_FILES = frozenset({CONFIG, MODEL, OPTIMIZER_TENSORS, OPTIMIZER_JSON, TRAINER_JSON, TRAINER_TENSORS, RNG_TENSORS})
SAFETENSORS_FILES = (MODEL, OPTIMIZER_TENSORS, TRAINER_TENSORS, RNG_TENSORS)
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz"})
"""File name endings of formats that may hold a pickle; a folder holding one is refused."""

MAX_HEADER_BYTES = 100_000_000
"""Largest safetensors JSON header accepted, in bytes (safetensors' own limit)."""
MAX_JSON_BYTES = 1 << 30
"""Largest JSON file read, in bytes."""

ALIASES_KEY = "embodied.aliases"
ORDER_KEY = "embodied.order"
TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__")

DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
"""Bytes per element of each safetensors dtype this module accepts."""

TORCH_DTYPES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
    torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
    torch.float64: "F64", torch.complex64: "C64",
    **{getattr(torch, n): c for n, c in [
        ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"),
        ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
    ] if hasattr(torch, n)},
}  # fmt: skip
"""torch dtype -> safetensors dtype name."""

STEP_DIR = re.compile(r"^step-(\d{8,})$")


class CheckpointError(EmbodiedError):
    """A checkpoint that is missing, incomplete, tampered with or not in embodied's format.

    The message is one line: the folder or file, what is wrong, and what to do.
    """


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- tree codec


class _Encoder:
    """Turns a tree of dicts, lists, tuples, scalars, tensors and arrays into JSON + tensors."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def _key(self, path: str) -> str:
        key, n = path or "value", 1
        while key in self.tensors:
            key, n = f"{path}#{n}", n + 1
        return key

    def encode(self, value: Any, path: str = "") -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, torch.Tensor):
            key = self._key(path)
            self.tensors[key] = value
            return {"__tensor__": key}
        if isinstance(value, np.ndarray):
            key = self._key(path)
            self.tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
            return {"__ndarray__": key}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{path}/{i}".lstrip("/")) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{path}/{i}".lstrip("/")) for i, v in enumerate(value)]
        if isinstance(value, dict):
            plain = all(isinstance(k, str) for k in value) and not any(k in TAGS for k in value)
            if plain:
                return {k: self.encode(v, f"{path}/{k}".lstrip("/")) for k, v in value.items()}
            return {
                "__dict__": [
                    [self.encode(k, f"{path}/key"), self.encode(v, f"{path}/{k}".lstrip("/"))] for k, v in value.items()
                ]
            }
        raise TypeError(f"cannot store a value of type {type(value).__name__} at {path or 'the top level'!r}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :class:`_Encoder`; raises ValueError or TypeError on a malformed tree."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag in ("__tensor__", "__ndarray__"):
            if not isinstance(inner, str) or inner not in tensors:
                raise ValueError(f"refers to a tensor {inner!r} that its .safetensors file does not hold")
            return tensors[inner] if tag == "__tensor__" else tensors[inner].numpy()
        if tag == "__tuple__":
            if not isinstance(inner, list):
                raise ValueError("holds a malformed tuple")
            return tuple(_decode(v, tensors) for v in inner)
        if tag == "__dict__":
            if not isinstance(inner, list) or not all(isinstance(p, list) and len(p) == 2 for p in inner):
                raise ValueError("holds a malformed dict")
            return {_decode(k, tensors): _decode(v, tensors) for k, v in inner}
    return {k: _decode(v, tensors) for k, v in value.items()}


# --------------------------------------------------------------------------- writing


def _prepare_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Detached, contiguous CPU tensors that share no storage, and ``{alias: stored name}``.

    A tensor that is exactly the same view (storage, offset, shape, strides, dtype) as an
    earlier one, such as a tied embedding, becomes an alias; any other overlap is cloned.
    """
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen_views: dict[tuple[Any, ...], str] = {}
    seen_storages: set[tuple[str, int]] = set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach()
        if t.numel() and t.device.type != "meta":
            storage = (str(t.device), t.untyped_storage().data_ptr())
            view = (*storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            if view in seen_views:
                aliases[name] = seen_views[view]
                continue
            seen_views[view] = name
            if storage in seen_storages:
                t = t.clone()
            else:
                seen_storages.add(storage)
        out[name] = t.to("cpu").contiguous()
    return out, aliases


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open a folder (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, value: Any, *, strict: bool = False) -> None:
    text = json.dumps(value, indent=2, allow_nan=not strict, ensure_ascii=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    stored, aliases = _prepare_tensors(tensors)
    meta = {"format": "pt", "embodied.format": FORMAT, "embodied.version": str(VERSION), **(metadata or {})}
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    meta[ORDER_KEY] = json.dumps(list(tensors))  # safetensors sorts names; keep the caller's order
    _save_file(stored, path, meta)


def _save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a standard safetensors file with a deterministic header, then fsync it.

    safetensors' own writer orders ``__metadata__`` keys at random (a Rust ``HashMap``), so
    the same weights would hash differently from save to save; this writer sorts every key.
    Data are laid out by descending element size, then name, so each tensor is aligned to
    its element size (the header is padded with spaces to a multiple of 8 bytes).
    """
    if sys.byteorder != "little":
        raise ValueError("safetensors files are little-endian; saving from a big-endian machine is not supported")
    names = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in names:
        t = tensors[name]
        if t.dtype not in TORCH_DTYPES:
            raise ValueError(f"{name!r} has dtype {t.dtype}, which safetensors cannot store")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": TORCH_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in names:
            t = tensors[name]
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        f.flush()
        os.fsync(f.fileno())


def _is_replaceable(folder: Path) -> bool:
    """True when ``folder`` is an empty folder or holds only checkpoint files (safe to replace)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    return all(entry.name in KNOWN_FILES and entry.is_file() for entry in folder.iterdir())


def save_checkpoint(
    folder: str | os.PathLike[str],
    *,
    config: dict[str, Any],
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    Args:
        folder: the checkpoint folder to create or replace. An existing folder is replaced
            only when it holds nothing but checkpoint files.
        config: the model configuration, a JSON object (written to ``config.json``).
        model: the model's ``state_dict`` (name -> tensor, any device; stored on CPU).
        optimizer: a torch optimizer's ``state_dict()``.
        scheduler: a learning-rate scheduler's ``state_dict()``.
        rng: the RNG state from :func:`capture_rng`.
        extra: anything else the trainer resumes from (global step in optimizer steps,
            sampler position, metrics, ...): JSON values, tuples, tensors, numpy arrays.

    Raises:
        CheckpointError: the target is not a checkpoint folder, the inputs cannot be
            stored, or the disk write failed (the previous checkpoint is then intact).
    """
    folder = Path(folder)
    if not isinstance(config, dict):
        raise CheckpointError(f"cannot save {folder}: config is a {type(config).__name__}, not a dict (a JSON object)")
    if folder.exists() and not _is_replaceable(folder):
        raise CheckpointError(
            f"cannot save a checkpoint to {folder}: it exists and holds files that are not an embodied checkpoint; "
            "choose another folder or move it away"
        )
    parent = folder.parent
    token = uuid.uuid4().hex[:12]
    tmp = parent / f".{folder.name}.tmp-{token}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        try:
            _write_json(tmp / CONFIG, config, strict=True)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"cannot save {folder}: config is not plain JSON ({_one_line(e)})") from None
        try:
            _write_tensors(tmp / MODEL, model)
            if optimizer is not None:
                enc = _Encoder()
                tree = enc.encode(optimizer)
                _write_tensors(tmp / OPTIMIZER_TENSORS, enc.tensors)
                _write_json(tmp / OPTIMIZER_JSON, {"format": FORMAT, "version": VERSION, "state_dict": tree})
            if scheduler is not None or rng is not None or extra is not None:
                enc = _Encoder()
                record: dict[str, Any] = {
                    "format": FORMAT,
                    "version": VERSION,
                    "scheduler": enc.encode(scheduler, "scheduler"),
                    "extra": enc.encode(extra, "extra"),
                    "rng": None,
                }
                if enc.tensors:
                    _write_tensors(tmp / TRAINER_TENSORS, enc.tensors)
                if rng is not None:
                    record["rng"], rng_tensors = _split_rng(rng)
                    _write_tensors(tmp / RNG_TENSORS, rng_tensors)
                _write_json(tmp / TRAINER_JSON, record)
        except (TypeError, ValueError, RuntimeError) as e:  # values that cannot be stored
            raise CheckpointError(f"cannot save {folder}: {_one_line(e)}") from None
        _fsync_dir(tmp)
        _move_into_place(tmp, folder, token)
    except OSError as e:
        raise CheckpointError(
            f"could not write checkpoint {folder}: {_one_line(e)}; free disk space or choose another folder "
            "(any previous checkpoint there is intact)"
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _move_into_place(tmp: Path, folder: Path, token: str) -> None:
    """Rename ``tmp`` to ``folder``; an existing ``folder`` is moved aside, then deleted."""
    if not folder.exists():
        os.replace(tmp, folder)
        _fsync_dir(folder.parent)
        return
    old = folder.parent / f".{folder.name}.old-{token}"
    os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(old, folder)  # put the previous checkpoint back
        raise
    _fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """The state of every global random generator a training step may draw from.

    Returns a dict with ``python`` (the :mod:`random` state as JSON lists), ``numpy``
    (numpy's global MT19937 state as JSON), ``torch`` (the CPU generator state, a uint8
    tensor) and ``cuda`` (one uint8 state tensor per visible CUDA device; empty without
    CUDA). Pass it to :func:`save_checkpoint` or :func:`restore_rng`.
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    cuda = [s.clone() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "bit_generator": str(name),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set every global random generator from a :func:`capture_rng` state.

    CUDA states are restored for the devices present now (state ``i`` to device ``i``);
    states for devices that are absent (such as resuming a GPU run on CPU) are skipped.

    Raises:
        CheckpointError: the state is malformed.
    """
    try:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), None if gauss is None else float(gauss)))
        npst = state["numpy"]
        np.random.set_state(
            (
                str(npst["bit_generator"]),
                np.asarray(npst["keys"], dtype=np.uint32),
                int(npst["pos"]),
                int(npst["has_gauss"]),
                float(npst["cached_gaussian"]),
            )
        )
        torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
        cuda = list(state.get("cuda") or [])
        if cuda and torch.cuda.is_available():
            for i, s in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s.to("cpu", torch.uint8), i)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"cannot restore the RNG state: it is malformed ({_one_line(e)}); resume from another checkpoint") from None


def _split_rng(rng: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
        raise ValueError("rng must be the dict returned by capture_rng()")
    cuda = list(rng.get("cuda") or [])
    tensors = {"torch": rng["torch"], **{f"cuda/{i}": s for i, s in enumerate(cuda)}}
    return {"python": rng["python"], "numpy": rng["numpy"], "cuda_devices": len(cuda)}, tensors


# --------------------------------------------------------------------------- reading


@dataclass
class Checkpoint:
    """A loaded checkpoint. Training parts are ``None`` unless loaded and present."""

    path: Path
    """The checkpoint folder."""
    config: dict[str, Any]
    """``config.json``."""
    model: dict[str, torch.Tensor]
    """The model ``state_dict``; tied names map to the same tensor object."""
    optimizer: dict[str, Any] | None = None
    """The optimizer ``state_dict``, ready for ``optimizer.load_state_dict``."""
    scheduler: dict[str, Any] | None = None
    """The scheduler ``state_dict``."""
    rng: dict[str, Any] | None = None
    """The RNG state for :func:`restore_rng`."""
    extra: dict[str, Any] | None = None
    """What the trainer saved besides (step, sampler position, metrics, ...)."""

    @property
    def step(self) -> int | None:
        """``extra["step"]`` (optimizer steps taken) when recorded."""
        step = (self.extra or {}).get("step")
        return step if isinstance(step, int) else None


def _looks_like_pickle(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save format, which holds a pickle)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a pickle"
    return None


def _read_safetensors_header(path: Path) -> dict[str, Any]:
    """Check a safetensors file's framing and JSON header without handing it to safetensors.

    Returns the header's ``__metadata__`` (str -> str). Raises :class:`CheckpointError` for a
    file that is not exactly a well-formed safetensors file.
    """
    fix = "restore it from a backup or delete the checkpoint folder"

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} {what}; {fix}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            kind = _looks_like_pickle(head)
            if kind:
                raise CheckpointError(
                    f"{path} is {kind}, not safetensors; embodied never loads pickles; "
                    "if you trust it, convert it to safetensors yourself"
                )
            if len(head) < 8:
                raise bad(f"is truncated ({size} bytes, shorter than the 8-byte safetensors length prefix)")
            n = int.from_bytes(head, "little")
            if n < 2 or n > size - 8:
                raise bad(f"has a corrupt header: its length prefix says {n} bytes but the file holds {size} bytes")
            if n > MAX_HEADER_BYTES:
                raise bad(f"has a header of {n} bytes, over the {MAX_HEADER_BYTES}-byte limit")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {_one_line(e)}; check the file's permissions") from None
    if len(raw) != n:
        raise bad("is truncated inside its header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("has a corrupt header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise bad("has a corrupt header (not a JSON object)")
    data_len = size - 8 - n
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise bad("has corrupt metadata")
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise bad(f"has a corrupt entry for {name!r}")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise bad(f"stores {name!r} with an unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"has a corrupt shape for {name!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise bad(f"has corrupt data offsets for {name!r} (file truncated or tampered)")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise bad(f"has a size mismatch for {name!r} (shape {shape} of {dtype} vs {offsets[1] - offsets[0]} bytes)")
        spans.append((offsets[0], offsets[1]))
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            raise bad("has overlapping or gapped tensor data (tampered)")
        end = stop
    if end != data_len:
        raise bad(f"has {data_len - end} bytes of data its header does not account for (truncated or tampered)")
    return metadata


def _load_tensors(path: Path, map_location: str | torch.device | None = "cpu") -> dict[str, torch.Tensor]:
    metadata = _read_safetensors_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # SafetensorError, or a Rust panic (a BaseException)
        raise CheckpointError(f"{path} cannot be read ({_one_line(e)}); restore it from a backup") from None
    if map_location is not None:
        try:
            if torch.device(map_location) != torch.device("cpu"):
                tensors = {k: v.to(map_location) for k, v in tensors.items()}
        except (RuntimeError, TypeError, ValueError) as e:
            raise CheckpointError(f"cannot load {path} onto device {map_location!r}: {_one_line(e)}; pick an available device") from None
    if ALIASES_KEY in metadata:
        try:
            aliases = json.loads(metadata[ALIASES_KEY])
            if not isinstance(aliases, dict):
                raise ValueError
            for alias, target in aliases.items():
                if alias in tensors or target not in tensors:
                    raise ValueError
                tensors[alias] = tensors[target]
        except (ValueError, TypeError):
            raise CheckpointError(f"{path} has corrupt alias metadata; restore it from a backup") from None
    if ORDER_KEY in metadata:
        try:
            order = json.loads(metadata[ORDER_KEY])
        except ValueError:
            order = None
        if isinstance(order, list) and sorted(map(str, order)) == sorted(tensors):
            tensors = {name: tensors[name] for name in order}
    return tensors


def _read_json(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path} is {size} bytes, too large for a checkpoint JSON file; it is not from embodied")
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {_one_line(e)}; check the file's permissions") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({_one_line(e)}); restore it from a backup or fix it by hand") from None


def _read_record(path: Path) -> dict[str, Any]:
    record = _read_json(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an embodied checkpoint record; restore it from a backup")
    version = record.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path} has layout version {version!r}, newer than this embodied reads ({VERSION}); upgrade embodied")
    return record


def _check_folder(folder: Path) -> None:
    """Refuse a missing folder, one holding pickle-format files, or one without the required files."""
    if not folder.exists():
        aside = sorted(folder.parent.glob(f".{folder.name}.old-*")) if folder.parent.is_dir() else []
        hint = f"; an interrupted save left the previous copy at {aside[0]}: rename it to {folder.name}" if aside else ""
        raise CheckpointError(f"checkpoint folder {folder} does not exist; check the path{hint}")
    if not folder.is_dir():
        if folder.suffix.lower() in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{folder} is a pickle-format file; embodied never loads pickles; "
                "if you trust it, convert it to safetensors yourself"
            )
        raise CheckpointError(f"{folder} is a file; pass the checkpoint folder (the one holding {CONFIG} and {MODEL})")
    try:
        names = sorted(entry.name for entry in folder.iterdir())
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint folder {folder}: {_one_line(e)}") from None
    pickles = [n for n in names if Path(n).suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(
            f"checkpoint folder {folder} holds {', '.join(pickles)} (pickle format); embodied never loads pickles; "
            "if you trust it, convert it to safetensors yourself, or remove it"
        )
    for required in (CONFIG, MODEL):
        if required not in names:
            raise CheckpointError(
                f"checkpoint folder {folder} has no {required}; it is not an embodied checkpoint "
                "(or an interrupted copy): pass a folder written by embodied"
            )
    for name in SAFETENSORS_FILES:  # every known tensor file must be sound, loaded or not
        if name in names:
            _read_safetensors_header(folder / name)


def load_checkpoint(
    folder: str | os.PathLike[str],
    *,
    training_state: bool = False,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read a checkpoint folder written by :func:`save_checkpoint`.

    Only the files named in this module's docstring are read, with :func:`json.loads` and
    safetensors, after this module has checked every safetensors header; nothing is
    unpickled or evaluated.

    Args:
        folder: the checkpoint folder.
        training_state: also load the optimizer, scheduler, RNG and ``extra`` (to resume);
            the folder must then hold ``trainer.json``.
        map_location: device for the model and optimizer tensors (RNG states stay on CPU).

    Raises:
        CheckpointError: the folder is missing, incomplete, tampered with, holds a pickle,
            or ``training_state`` is asked of a weights-only checkpoint.
    """
    folder = Path(folder)
    _check_folder(folder)
    config = _read_json(folder / CONFIG)
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / CONFIG} holds a {type(config).__name__}, not a JSON object; fix it or restore it")
    model = _load_tensors(folder / MODEL, map_location)
    ckpt = Checkpoint(path=folder, config=config, model=model)
    if not training_state:
        return ckpt

    has_tensors, has_json = (folder / OPTIMIZER_TENSORS).is_file(), (folder / OPTIMIZER_JSON).is_file()
    if has_tensors != has_json:
        missing = OPTIMIZER_JSON if has_tensors else OPTIMIZER_TENSORS
        raise CheckpointError(f"checkpoint folder {folder} has no {missing}; its optimizer state is incomplete: resume from another checkpoint")
    if has_json:
        record = _read_record(folder / OPTIMIZER_JSON)
        tensors = _load_tensors(folder / OPTIMIZER_TENSORS, map_location)
        ckpt.optimizer = _decode_tree(record.get("state_dict"), tensors, folder / OPTIMIZER_JSON)
        if not isinstance(ckpt.optimizer, dict):
            raise CheckpointError(f"{folder / OPTIMIZER_JSON} holds no optimizer state_dict; resume from another checkpoint")
    if not (folder / TRAINER_JSON).is_file():
        raise CheckpointError(
            f"checkpoint folder {folder} holds weights only (no {TRAINER_JSON}), so it cannot resume a run; "
            "start a new run from its weights instead"
        )
    record = _read_record(folder / TRAINER_JSON)
    tensors = _load_tensors(folder / TRAINER_TENSORS, map_location) if (folder / TRAINER_TENSORS).is_file() else {}
    ckpt.scheduler = _decode_tree(record.get("scheduler"), tensors, folder / TRAINER_JSON)
    ckpt.extra = _decode_tree(record.get("extra"), tensors, folder / TRAINER_JSON)
    rng = record.get("rng")
    if rng is not None:
        if not (folder / RNG_TENSORS).is_file():
            raise CheckpointError(f"checkpoint folder {folder} has no {RNG_TENSORS}; its RNG state is incomplete: resume from another checkpoint")
        rng_tensors = _load_tensors(folder / RNG_TENSORS, None)
        try:
            n = int(rng.get("cuda_devices", 0))
            ckpt.rng = {
                "python": rng["python"],
                "numpy": rng["numpy"],
                "torch": rng_tensors["torch"],
                "cuda": [rng_tensors[f"cuda/{i}"] for i in range(n)],
            }
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CheckpointError(f"{folder / TRAINER_JSON} and {RNG_TENSORS} hold a malformed RNG state; resume from another checkpoint") from None
    return ckpt


def _decode_tree(value: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    try:
        return _decode(value, tensors)
    except (ValueError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{where} {_one_line(e)}; restore it from a backup") from None


# --------------------------------------------------------------------------- hashes


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``config`` as canonical JSON (sorted keys, no spaces): key order does not matter."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot hash the config: it is not plain JSON ({_one_line(e)})") from None
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def model_hash(folder: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the bytes of ``folder/model.safetensors``, after the same checks as a load.

    Adapters record it to tie themselves to their base checkpoint.
    """
    folder = Path(folder)
    _check_folder(folder)
    digest = hashlib.sha256()
    try:
        with open(folder / MODEL, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        raise CheckpointError(f"cannot read {folder / MODEL}: {_one_line(e)}") from None
    return digest.hexdigest()


# --------------------------------------------------------------------------- single files


def _write_atomically(path: Path, write: Callable[[Path], None], not_saveable: str) -> Path:
    """``write(tmp)`` to a hidden temporary beside ``path``, then :func:`os.replace` it into place and fsync the
    folder; any failure is a one-line :class:`CheckpointError` (``not_saveable`` says why the value cannot be saved)
    and leaves no temporary behind."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise CheckpointError(f"could not write {path}: {_one_line(e)}; free disk space or pick another folder") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(not_saveable.format(path=path, why=_one_line(e))) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write one safetensors file atomically (a hidden temporary beside it, then :func:`os.replace`).

    Used for files that live outside a checkpoint folder, such as adapters; the header is
    deterministic, so the same tensors give the same bytes.
    """
    return _write_atomically(Path(path), lambda tmp: _write_tensors(tmp, tensors, metadata), "cannot save {path}: {why}")


def load_tensors(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read one safetensors file after the checks of a checkpoint load (a pickle or a tampered file is refused)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path} is a pickle-format file; embodied never loads pickles; if you trust it, convert it to safetensors yourself")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; check the path")
    return _load_tensors(path, map_location)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file (size-limited, plain :func:`json.loads`); a broken one is a one-line :class:`CheckpointError`."""
    return _read_json(Path(path))


def write_json(path: str | os.PathLike[str], value: Any) -> Path:
    """Write ``value`` as strict JSON atomically (a hidden temporary beside it, then :func:`os.replace`)."""
    return _write_atomically(Path(path), lambda tmp: _write_json(tmp, value, strict=True),
                             "cannot save {path}: it is not plain JSON ({why})")


# --------------------------------------------------------------------------- manager


class CheckpointManager:
    """The checkpoints of one run: ``run_dir/checkpoints/step-<8 digits>`` folders.

    ``latest.json`` and ``best.json`` (small JSON files, replaced atomically) point at the
    newest and the best checkpoint. After each save, checkpoints older than the newest
    ``keep_last`` are deleted, except the best one; folders with a higher step than the one
    just saved (left by a run that crashed after it) are kept until overwritten. One writer
    per run: the caller saves from one process (rank zero under DDP).

    Args:
        run_dir: the run's folder.
        keep_last: how many of the newest checkpoints to keep (at least 1).
        keep_best: also keep the checkpoint with the best metric.
        mode: ``"min"`` when a lower metric is better (a loss), ``"max"`` when higher is.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        keep_last: int = 3,
        keep_best: bool = True,
        mode: Literal["min", "max"] = "min",
    ) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ConfigError(f"keep_last must be an integer of at least 1, got {keep_last!r}")
        if mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.mode = mode

    @staticmethod
    def name(step: int) -> str:
        """Folder name of the checkpoint at ``step`` (optimizer steps)."""
        return f"step-{step:08d}"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest step first (temporary and set-aside folders excluded)."""
        return [self.dir / self.name(s) for s in self._steps()]

    def _steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        steps = []
        for entry in self.dir.iterdir():
            m = STEP_DIR.match(entry.name)
            if m and entry.is_dir():
                steps.append(int(m.group(1)))
        return sorted(steps)

    def _pointer(self, name: str) -> dict[str, Any] | None:
        path = self.dir / name
        if not path.is_file():
            return None
        try:
            record = _read_json(path)
        except CheckpointError:
            return None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            return None
        if not STEP_DIR.match(record["path"]) or not (self.dir / record["path"]).is_dir():
            return None
        return record

    def latest(self) -> Path | None:
        """The newest checkpoint (``latest.json``, else the highest step present), or ``None``."""
        record = self._pointer("latest.json")
        if record is not None:
            return self.dir / record["path"]
        steps = self._steps()
        return self.dir / self.name(steps[-1]) if steps else None

    def best(self) -> Path | None:
        """The checkpoint with the best metric (``best.json``, else rescanned), or ``None``."""
        if not self.keep_best:
            return None
        record = self._pointer("best.json")
        if record is not None:
            return self.dir / record["path"]
        found = self._scan_best()
        return self.dir / self.name(found[0]) if found else None

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _metric_of(self, step: int) -> float | None:
        path = self.dir / self.name(step) / TRAINER_JSON
        try:
            record = _read_record(path)
        except CheckpointError:
            return None
        metric = (record.get("extra") or {}).get("metric") if isinstance(record.get("extra"), dict) else None
        if isinstance(metric, bool) or not isinstance(metric, (int, float)) or not math.isfinite(metric):
            return None
        return float(metric)

    def _scan_best(self) -> tuple[int, float] | None:
        best: tuple[int, float] | None = None
        for step in self._steps():
            metric = self._metric_of(step)
            if metric is not None and (best is None or self._better(metric, best[1])):
                best = (step, metric)
        return best

    def _write_pointer(self, name: str, record: dict[str, Any]) -> None:
        tmp = self.dir / f".{name}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            _write_json(tmp, record, strict=True)
            os.replace(tmp, self.dir / name)
        except OSError as e:
            raise CheckpointError(f"could not write {self.dir / name}: {_one_line(e)}; free disk space") from None
        finally:
            if tmp.exists():
                tmp.unlink()

    def _tidy(self) -> None:
        """Repair what an interrupted save left: restore set-aside copies, drop temporaries."""
        if not self.dir.is_dir():
            return
        for entry in self.dir.iterdir():
            m = re.match(r"^\.(step-\d{8,}|latest\.json|best\.json)\.(tmp|old)-[0-9a-f]+$", entry.name)
            if not m:
                continue
            target = self.dir / m.group(1)
            if m.group(2) == "old" and not target.exists():
                os.replace(entry, target)
            elif entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def save(self, step: int, metric: float | None = None, **kwargs: Any) -> Path:
        """Save the checkpoint of ``step`` (optimizer steps) and update pointers and retention.

        Args:
            step: the global step; names the folder.
            metric: the value that ranks checkpoints for ``best`` (``None``, NaN or inf:
                not ranked). Recorded as ``extra["metric"]``; ``extra["step"]`` is set too.
            **kwargs: :func:`save_checkpoint`'s keyword arguments (config, model, ...).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"step must be a non-negative integer, got {step!r}")
        try:
            self._tidy()
        except OSError as e:
            raise CheckpointError(f"cannot tidy {self.dir}: {_one_line(e)}") from None
        extra = dict(kwargs.pop("extra", None) or {})
        extra.setdefault("step", step)
        if metric is not None:
            metric = float(metric)
            extra["metric"] = metric
        name = self.name(step)
        path = save_checkpoint(self.dir / name, extra=extra, **kwargs)
        self._write_pointer("latest.json", {"step": step, "path": name})

        best_step: int | None = None
        if self.keep_best:
            record = self._pointer("best.json")
            current: tuple[int, float] | None
            if (
                record is not None
                and type(record.get("step")) is int
                and record["step"] != step
                and record.get("mode") == self.mode
                and isinstance(record.get("metric"), (int, float))
            ):
                current = (record["step"], float(record["metric"]))
            else:  # missing, unreadable, or its checkpoint was just overwritten: rescan
                current = self._scan_best()
            if metric is not None and math.isfinite(metric) and (current is None or self._better(metric, current[1])):
                current = (step, metric)
            if current is not None:
                self._write_pointer("best.json", {"step": current[0], "path": self.name(current[0]), "metric": current[1], "mode": self.mode})
                best_step = current[0]
            elif (self.dir / "best.json").exists():
                (self.dir / "best.json").unlink()

        older = [s for s in self._steps() if s <= step]
        for s in older[: -self.keep_last]:
            if s != best_step:
                self._delete(self.name(s))
        return path

    def _delete(self, name: str) -> None:
        """Delete a checkpoint folder: renamed aside first, so a crash never leaves half of one."""
        aside = self.dir / f".{name}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            os.replace(self.dir / name, aside)
        except OSError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.checkpoints())
