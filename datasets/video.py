"""Video files: H.264 MP4 writing (plays in browsers) and reading, through PyAV (bundled FFmpeg).

OpenCV's pip wheels cannot encode H.264, so writing goes through PyAV's libx264. Writes are
atomic: frames go to a temporary file that is renamed over ``path`` only when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np


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
                    stream = container.add_stream("libx264", rate=int(round(fps)))
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
