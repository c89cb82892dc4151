"""The file operations an episode store needs beyond Zarr: atomic small writes, listing and a writer lock.

One class serves a local folder (plain ``os`` calls, an ``flock`` writer lock that the kernel
releases when the writer dies) and any other fsspec URL (``memory://`` in tests, object
stores for many machines: single-object puts are atomic there, and the lock is a small
object naming its holder).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from embodied.errors import EmbodiedError

try:  # imported here, not in release_lock: a writer dropped at interpreter exit can no longer import
    import fcntl
except ImportError:  # no flock on Windows
    fcntl = None  # type: ignore[assignment]


class StoreLockedError(EmbodiedError):
    """A second writer tried to open a store that another writer holds."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreFiles:
    """Small-file access below the root of a store, by keys such as ``"episodes/0000000001-ab12.json"``."""

    LOCK = "writer.lock"

    def __init__(self, url: str) -> None:
        import fsspec.core
        from fsspec.implementations.local import LocalFileSystem

        self.url = str(url)
        fs, root = fsspec.core.url_to_fs(self.url)
        self.fs = fs
        self.local = isinstance(fs, LocalFileSystem)
        self.root = os.path.abspath(root) if self.local else root.rstrip("/")
        self._lock_fd: int | None = None
        self._lock_token: str | None = None

    # ------------------------------------------------------------------ paths and zarr
    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def zarr_store(self, read_only: bool) -> Any:
        """The Zarr store over the same root (``LocalStore`` for folders, ``FsspecStore`` otherwise)."""
        from zarr.storage import FsspecStore, LocalStore

        if self.local:
            return LocalStore(self.root, read_only=read_only)
        return FsspecStore.from_url(self.url, read_only=read_only)

    # ------------------------------------------------------------------ small files
    def exists(self, key: str = "") -> bool:
        return os.path.exists(self.path(key)) if self.local else bool(self.fs.exists(self.path(key)))

    def read(self, key: str) -> bytes:
        if self.local:
            return Path(self.path(key)).read_bytes()
        return bytes(self.fs.cat_file(self.path(key)))

    def read_json(self, key: str) -> Any:
        return json.loads(self.read(key))

    def write_atomic(self, key: str, data: bytes) -> None:
        """Write ``data`` so that readers see either the old content or all of the new, never a part."""
        path = self.path(key)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex[:12]}.partial"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:  # a single put is atomic on object stores and in memory
            self.fs.pipe_file(path, data)

    def write_json(self, key: str, obj: Any) -> None:
        self.write_atomic(key, json.dumps(obj, separators=(",", ":")).encode())

    def delete(self, key: str) -> None:
        path = self.path(key)
        if self.local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        elif self.fs.exists(path):
            self.fs.rm_file(path)

    def names(self, folder: str) -> list[str]:
        """File names directly inside ``folder`` (no sub-folders), sorted."""
        path = self.path(folder)
        if self.local:
            try:
                return sorted(e.name for e in os.scandir(path) if e.is_file())
            except FileNotFoundError:
                return []
        if not self.fs.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    def walk(self, folder: str) -> dict[str, int]:
        """Every file below ``folder`` (recursively): key relative to the root -> size in bytes."""
        base = self.path(folder)
        out: dict[str, int] = {}
        if self.local:
            n = len(self.root) + 1
            for dirpath, _, files in os.walk(base):
                for name in files:
                    p = os.path.join(dirpath, name)
                    with contextlib.suppress(FileNotFoundError):
                        out[p[n:]] = os.path.getsize(p)
            return out
        if not self.fs.exists(base):
            return out
        n = len(self.root.strip("/")) + 1
        for p, info in self.fs.find(base, detail=True).items():
            out[p.strip("/")[n:]] = int(info.get("size") or 0)
        return out

    def remove_all(self) -> None:
        """Delete the whole store (used by ``create(..., overwrite=True)``)."""
        if self.local:
            import shutil

            shutil.rmtree(self.root, ignore_errors=True)
        elif self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)

    # ------------------------------------------------------------------ the writer lock
    def _holder(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "token": self._lock_token}

    def _refusal(self, holder: dict[str, Any] | None) -> StoreLockedError:
        who = f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" if holder else "another process"
        return StoreLockedError(
            f"{self.url} is already open for writing by {who}; one writer at a time: wait for it to finish "
            f"(readers may open the store meanwhile), or if that writer is gone run `embodied data repair {self.url} --break-lock`"
        )

    def acquire_lock(self) -> None:
        """Become the one writer, or raise :class:`StoreLockedError` naming the current one."""
        self._lock_token = uuid.uuid4().hex
        path = self.path(self.LOCK)
        if self.local:
            os.makedirs(self.root, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    holder = json.loads(os.pread(fd, 4096, 0) or b"null")
                except ValueError:
                    holder = None
                os.close(fd)
                raise self._refusal(holder) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self._holder()).encode(), 0)
            self._lock_fd = fd
            return
        if self.fs.exists(path):
            try:
                holder = json.loads(self.fs.cat_file(path))
            except ValueError:
                holder = None
            stale = holder and holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1)))
            if not stale:
                raise self._refusal(holder)
        self.fs.pipe_file(path, json.dumps(self._holder()).encode())

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
        elif self._lock_token is not None and not self.local:
            with contextlib.suppress(FileNotFoundError, ValueError):
                if json.loads(self.fs.cat_file(self.path(self.LOCK))).get("token") == self._lock_token:
                    self.fs.rm_file(self.path(self.LOCK))
        self._lock_token = None

    def break_lock(self) -> None:
        """Remove a lock left by a writer that is gone (object stores; local locks free themselves)."""
        if not self.local:
            self.delete(self.LOCK)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.acquire_lock()
        try:
            yield
        finally:
            self.release_lock()
