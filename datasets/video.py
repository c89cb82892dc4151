"""Video files: H.264 MP4 writing (plays in browsers) and reading, through PyAV (bundled FFmpeg);
importing videos and image folders into an episode store, and exporting episodes as videos.

OpenCV's pip wheels cannot encode H.264, so writing goes through PyAV's libx264. Writes are
atomic: frames go to a temporary file that is renamed over ``path`` only when complete.

Importing (:func:`import_videos`) decodes one frame at a time, picks the frames nearest the
store's control rate and shrinks each to the store's resolution as it arrives, so only the
small store-sized frames of one episode are ever held in memory.
"""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from embodied import specs
from embodied.errors import EmbodiedError

from .store import StoreError

if TYPE_CHECKING:
    from .store import EpisodeStore

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
"""Video files that :class:`FrameSource` decodes (through PyAV)."""
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
"""Image files that make up an image folder (read with OpenCV)."""


class VideoError(EmbodiedError):
    """A video or image folder that cannot be imported, or an episode that cannot be exported."""


def _rate(fps: float) -> int | Fraction:
    """A frame rate for the encoder: an int when whole, else a fraction (29.97 -> 30000/1001)."""
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return int(round(fps)) if abs(fps - round(fps)) < 1e-6 else Fraction(fps).limit_denominator(1001)


def write_video(path: str | os.PathLike[str], frames: Iterable[np.ndarray], fps: float = 20.0, crf: int = 20) -> int:
    """Encode RGB uint8 frames (H, W, 3), H and W even, as H.264 (yuv420p) MP4; returns the frame count."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.mp4")
    n = 0
    try:
        with av.open(str(tmp), "w", options={"movflags": "faststart"}) as container:  # index first: streams in browsers
            stream = None
            for frame in frames:
                frame = np.ascontiguousarray(frame, dtype=np.uint8)
                if frame.ndim != 3 or frame.shape[2] != 3:
                    raise ValueError(f"frames must be (H, W, 3) uint8, got shape {frame.shape}")
                if stream is None:
                    h, w = frame.shape[:2]
                    if h % 2 or w % 2:
                        raise ValueError(f"H.264 needs even frame sizes, got {w}x{h}")
                    stream = container.add_stream("libx264", rate=_rate(fps))
                    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
                n += 1
            if stream is None:
                raise ValueError("no frames to write")
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n


def read_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Decode a video file into RGB uint8 frames (T, H, W, 3) and its frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0.0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return np.stack(frames), fps


# ---------------------------------------------------------------------------- reading sources
def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _natural_key(name: str) -> list[Any]:
    """``frame2.png`` before ``frame10.png``: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The PNG/JPEG/BMP files of ``folder`` in natural order (hidden files and subfolders skipped)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(p.name))


class FrameSource:
    """The frames of a video file (MP4/AVI/MOV/MKV/WEBM) or of a folder of images, decoded lazily.

    Opening checks the source (exists, supported, readable, not empty) and reads its frame
    rate; iterating decodes one RGB uint8 frame (H, W, 3) at a time. ``fps`` overrides the
    file's own rate; an image folder has none (``self.fps`` is None then). Frames are taken
    as evenly spaced at ``fps`` (a variable-rate file is treated as constant-rate).
    """

    def __init__(self, path: str | os.PathLike[str], fps: float | None = None) -> None:
        self.path = Path(path)
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise VideoError(f"--fps must be a positive number, got {fps}")
        if not self.path.exists():
            raise VideoError(f"{self.path}: no such file or folder")
        self.files: list[Path] = []
        self.file_fps: float | None = None
        """The rate the file declares (None for image folders)."""
        if self.path.is_dir():
            self.kind = "images"
            self.files = image_files(self.path)
            if not self.files:
                raise VideoError(f"{self.path}: folder holds no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)})")
            self.frames: int | None = len(self.files)
        elif self.path.suffix.lower() in VIDEO_EXTENSIONS:
            self.kind = "video"
            self.file_fps, self.frames = self._probe()
        else:
            raise VideoError(
                f"{self.path}: unsupported file type {self.path.suffix or '(none)'!r}; give a video "
                f"({', '.join(e[1:] for e in VIDEO_EXTENSIONS)}) or a folder of {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images"
            )
        self.fps: float | None = float(fps) if fps is not None else self.file_fps
        """The rate the frames are taken at: ``fps`` if given, else the file's (None: unknown)."""

    @property
    def name(self) -> str:
        return self.path.name

    def _probe(self) -> tuple[float | None, int | None]:
        import av

        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise VideoError(f"{self.path}: holds no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                frames = int(stream.frames) or None
                # decode the first frame, so an unreadable stream fails here, before any store is touched
                first = next(iter(container.decode(stream)), None)
        except VideoError:
            raise
        except Exception as e:  # av.FFmpegError, OSError, codec errors
            raise VideoError(f"{self.path}: cannot read video ({_one_line(e)}); is it damaged?") from e
        if first is None:
            raise VideoError(f"{self.path}: holds no video frames")
        return (float(rate) if rate else None), frames

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._images() if self.kind == "images" else self._video()

    def _images(self) -> Iterator[np.ndarray]:
        import cv2

        for p in self.files:
            try:
                bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            except cv2.error as e:
                raise VideoError(f"{p}: cannot read image ({_one_line(e)})") from e
            if bgr is None:
                raise VideoError(f"{p}: cannot read image; is it damaged?")
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _video(self) -> Iterator[np.ndarray]:
        import av

        n = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    rgb = frame.to_ndarray(format="rgb24")
                    n += 1
                    yield rgb
        except VideoError:
            raise
        except Exception as e:
            raise VideoError(f"{self.path}: cannot decode video after {n} frames ({_one_line(e)}); is it damaged?") from e
        if n == 0:
            raise VideoError(f"{self.path}: holds no video frames")
        if self.frames and n < self.frames - max(2, self.frames // 20):  # FFmpeg stops quietly at a cut
            raise VideoError(f"{self.path}: declares {self.frames} frames but only {n} decode; is it truncated?")


def read_frames(path: str | os.PathLike[str], fps: float | None = None) -> tuple[np.ndarray, float | None]:
    """All frames of a video file or image folder as RGB uint8 (T, H, W, 3), and the source frame rate.

    The rate is ``fps`` when given, else the file's own (None for an image folder). All frames
    must share one size; :class:`FrameSource` reads them one at a time, of any sizes.
    """
    src = FrameSource(path, fps)
    frames = list(src)
    if len({f.shape for f in frames}) > 1:
        raise VideoError(f"{src.path}: frames differ in size; read them one by one with FrameSource")
    return np.stack(frames), src.fps


# ---------------------------------------------------------------------------- resampling, resizing
def resample(frames: Iterable[np.ndarray], fps: float, hz: float) -> Iterator[np.ndarray]:
    """Frames at ``fps`` resampled to ``hz`` by taking, for each output time k/hz, the nearest input frame.

    Output times cover the input's duration ``[0, n/fps)``: ``ceil(n * hz / fps)`` frames
    (the same count at equal rates, about twice as many from 10 to 20 Hz, a third from 60).
    Streams: each input frame is yielded (possibly repeatedly) as soon as it is decoded.
    """
    if not (fps > 0 and hz > 0):
        raise VideoError(f"frame rates must be positive, got {fps} -> {hz}")
    r = fps / hz  # input frames per output frame
    k, n, last = 0, 0, None
    for i, frame in enumerate(frames):
        while math.floor(k * r + 0.5 + 1e-9) <= i:  # nearest input frame of output k is i
            yield frame
            k += 1
        last, n = frame, i + 1
    if last is None:
        return
    total = math.ceil(n / r - 1e-9)
    while k < total:  # output times in the last half input frame
        yield last
        k += 1


def fit_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Center-crop ``frame`` to the aspect ratio of ``height`` x ``width`` (square for a store), then resize.

    A frame of another aspect ratio loses its borders on the long side rather than being
    squashed. Shrinking uses ``cv2.INTER_AREA`` (no aliasing); enlarging uses bilinear.
    """
    import cv2

    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(frame, dtype=np.uint8)
    if w * height > h * width:  # too wide
        cw = max(1, round(h * width / height))
        x0 = (w - cw) // 2
        frame = frame[:, x0 : x0 + cw]
    elif w * height < h * width:  # too tall
        ch = max(1, round(w * height / width))
        y0 = (h - ch) // 2
        frame = frame[y0 : y0 + ch]
    shrink = frame.shape[0] >= height and frame.shape[1] >= width
    out = cv2.resize(np.ascontiguousarray(frame), (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.astype(np.uint8, copy=False)


# ---------------------------------------------------------------------------- store import / export
def _pixels_shape(store: "EpisodeStore") -> tuple[int, int]:
    f = store.features.get(specs.PIXELS)
    if f is None:
        raise StoreError(f"{store.url} has no {specs.PIXELS!r} feature (it stores {sorted(store.features)}); import videos into a store with pixels")
    if len(f.shape) != 3 or f.shape[2] != 3 or f.dtype != "uint8":
        raise StoreError(f"{store.url}: feature {specs.PIXELS!r} is {f.dtype} {f.shape}, not uint8 (H, W, 3)")
    return int(f.shape[0]), int(f.shape[1])


def open_sources(paths: Sequence[str | os.PathLike[str] | FrameSource], fps: float | None = None) -> list[FrameSource]:
    """Open and check every source (readable, not empty, a known frame rate) before anything is written."""
    if not paths:
        raise VideoError("no videos or image folders to import")
    sources = [p if isinstance(p, FrameSource) else FrameSource(p, fps) for p in paths]
    for src in sources:
        if src.fps is None:
            kind = "is a folder of images, which has" if src.kind == "images" else "declares"
            raise VideoError(f"{src.path} {kind} no frame rate; give it with --fps")
    return sources


def import_videos(
    store: "EpisodeStore",
    paths: Sequence[str | os.PathLike[str] | FrameSource],
    instruction: str,
    fps: float | None = None,
    source: str = "video",
    progress: Callable[[str], None] | None = None,
) -> list[int]:
    """Import each video file or image folder as one actionless episode; returns their indices.

    Frames are resampled to ``store.control_hz`` (:func:`resample`; ``fps`` overrides a
    file's own rate and is required for image folders) and fitted to the store's pixel size
    (:func:`fit_frame`, center-cropping other aspect ratios). Only the ``pixels`` feature is
    written; actions, state and outcomes read as masked. Metadata: ``instruction``,
    ``source``, ``origin`` (the file or folder name), ``source_fps`` (the rate used),
    ``source_frames`` (frames decoded), ``valid`` (True); the store adds ``length``.
    Every source is checked before the first episode is written; each episode commits on
    its own, so a source failing to decode midway leaves the earlier ones in the store.
    """
    height, width = _pixels_shape(store)
    sources = open_sources(paths, fps)
    out: list[int] = []
    for src in sources:
        frames: list[np.ndarray] = []
        seen = 0
        prev_in: np.ndarray | None = None
        prev_out: np.ndarray | None = None

        def counted(it: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
            nonlocal seen
            for f in it:
                seen += 1
                yield f

        for frame in resample(counted(src), src.fps, store.control_hz):
            if frame is not prev_in:  # a repeated input frame is resized once
                prev_in, prev_out = frame, fit_frame(frame, height, width)
            frames.append(prev_out)  # type: ignore[arg-type]
        if not frames:
            raise VideoError(f"{src.path}: holds no frames")
        meta = {
            specs.INSTRUCTION: instruction,
            "source": source,
            "origin": src.name,
            "source_fps": src.fps,
            "source_frames": seen,
            specs.VALID: True,
        }
        i = store.add_episode({specs.PIXELS: np.stack(frames)}, meta)
        out.append(i)
        if progress:
            progress(f"{src.path}: {seen} frames at {src.fps:g} fps -> episode {i}, {len(frames)} frames at {store.control_hz:g} Hz")
    return out


def export_video(store: "EpisodeStore", index: int, out: str | os.PathLike[str], fps: float | None = None) -> int:
    """Write the pixels of episode ``index`` as an H.264 MP4 (plays in browsers); returns the frame count.

    The rate is the store's control rate unless ``fps`` is given. Odd frame sizes are padded
    by one edge row/column (H.264 needs even sizes).
    """
    _pixels_shape(store)
    n = len(store)
    if not -n <= int(index) < n:
        span = f"0..{n - 1}" if n else "none"
        raise StoreError(f"episode {index} out of range: {store.url} has {n} episodes ({span})")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise VideoError(f"--fps must be a positive number, got {fps}")
    present = int(store.record(index)["present"].get(specs.PIXELS, 0))
    if not present:
        raise VideoError(f"episode {index} of {store.url} has no pixels to export")
    frames = store.episode(index, keys=[specs.PIXELS])[specs.PIXELS][:present]
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return write_video(out, frames, fps=float(fps or store.control_hz))
