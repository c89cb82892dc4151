"""Video import / export: `embodied data import-video` and `export-video`, and the functions behind them."""

from __future__ import annotations

import numpy as np
import pytest

from embodied import specs
from embodied.cli import main
from embodied.datasets.store import EpisodeStore, Feature, StoreError, default_features
from embodied.datasets.video import (
    FrameSource,
    VideoError,
    export_video,
    fit_frame,
    image_files,
    import_videos,
    read_frames,
    read_video,
    resample,
    write_video,
)


def squares(n: int, h: int = 64, w: int = 64) -> np.ndarray:
    """Moving coloured squares on a dark background: (n, h, w, 3) uint8."""
    out = np.zeros((n, h, w, 3), np.uint8)
    out[:] = (30, 40, 70)
    s = h // 4
    for i in range(n):
        x = (2 * i) % (w - s)
        y = (i * 3) % (h - s)
        out[i, h // 8 : h // 8 + s, x : x + s] = (230, 40, 30)
        out[i, y : y + s, w - s - x : w - x] = (40, 220, 60)
    return out


def pixel_store(path, size: int = 64, hz: float = 20.0) -> EpisodeStore:
    return EpisodeStore.create(path, {specs.PIXELS: Feature((size, size, 3), "uint8", observation=True)}, control_hz=hz)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


# ---------------------------------------------------------------------------- round trips
def test_import_export_round_trip_keeps_frames_and_content(tmp_path):
    src = squares(50)
    write_video(tmp_path / "in.mp4", src, fps=20)
    with pixel_store(tmp_path / "d.zarr") as store:
        (i,) = import_videos(store, [tmp_path / "in.mp4"], "push the red square", source="test")
        meta = store.meta(i)
        stored = store.episode(i)[specs.PIXELS]
        assert export_video(store, i, tmp_path / "out.mp4") == 50
    assert meta["instruction"] == "push the red square" and meta["source"] == "test" and meta["origin"] == "in.mp4"
    assert meta["source_fps"] == 20 and meta["source_frames"] == 50 and meta["length"] == 50
    assert meta["valid"] is True and meta["has_actions"] is False
    assert stored.shape == (50, 64, 64, 3) and mae(stored, src) < 8
    back, fps = read_video(tmp_path / "out.mp4")
    assert fps == 20 and back.shape == src.shape
    assert mae(back, src) < 8, mae(back, src)


def test_export_is_browser_h264(tmp_path):
    import av

    with pixel_store(tmp_path / "d.zarr", size=84) as store:
        store.add_episode({specs.PIXELS: squares(12, 84, 84)})
        export_video(store, -1, tmp_path / "x.mp4", fps=10)
    with av.open(str(tmp_path / "x.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert float(s.average_rate) == 10 and sum(1 for _ in c.decode(s)) == 12


def test_image_folder_at_10_fps_into_20_hz_store_doubles_frames_in_natural_order(tmp_path):
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(1, 13):  # frame1 .. frame12: natural order differs from string order
        img = np.full((48, 48, 3), 20 * k, np.uint8)
        img[..., 0] = 0  # B of BGR: the stored frames must have R == 20k, B == 0
        cv2.imwrite(str(folder / f"frame{k}.png"), img)
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in image_files(folder)][:3] == ["frame1.png", "frame2.png", "frame3.png"]
    with pixel_store(tmp_path / "d.zarr") as store:
        (i,) = import_videos(store, [folder], "watch", fps=10)
        px = store.episode(i)[specs.PIXELS]
        assert store.meta(i)["source_fps"] == 10 and store.meta(i)["source_frames"] == 12
    assert len(px) == 24
    red = px[:, 32, 32, 0].astype(int)
    assert list(red) == [20 * (1 + min((t + 1) // 2, 11)) for t in range(24)]  # output t at t/20 s: input (t+1)//2 (ties go later)
    assert np.all(px[..., 2] == 0)


def test_resize_center_crops_128x96_to_64x64(tmp_path):
    frame = np.zeros((96, 128, 3), np.uint8)
    frame[:] = (0, 0, 255)
    frame[:, :16] = frame[:, -16:] = (255, 0, 0)  # borders that the center crop removes
    out = fit_frame(frame, 64, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.all(out == (0, 0, 255))
    write_video(tmp_path / "wide.mp4", [frame] * 6, fps=20)
    with pixel_store(tmp_path / "d.zarr") as store:
        (i,) = import_videos(store, [tmp_path / "wide.mp4"], "look")
        px = store.episode(i)[specs.PIXELS]
    assert px.shape == (6, 64, 64, 3)
    assert px[..., 2].mean() > 240 and px[..., 0].mean() < 10


def test_avi_written_by_opencv_imports(tmp_path):
    import cv2

    src = squares(15, 96, 128)
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, (128, 96))
    for f in src:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    frames, fps = read_frames(path)
    assert frames.shape == (15, 96, 128, 3) and fps == 20 and mae(frames, src) < 8
    with pixel_store(tmp_path / "d.zarr") as store:
        (i,) = import_videos(store, [path], "push")
        px = store.episode(i)[specs.PIXELS]
    expected = np.stack([fit_frame(f, 64, 64) for f in src])
    assert px.shape == (15, 64, 64, 3) and mae(px, expected) < 8


def test_resample_picks_the_nearest_frame():
    def idx(n, fps, hz):
        return [int(f[0]) for f in resample((np.array([i]) for i in range(n)), fps, hz)]

    assert idx(5, 20, 20) == [0, 1, 2, 3, 4]
    assert idx(9, 60, 20) == [0, 3, 6]
    assert idx(6, 30, 20) == [0, 2, 3, 5]  # .05 s and .15 s lie halfway between two frames: ties go to the later
    assert idx(3, 10, 20) == [0, 1, 1, 2, 2, 2]
    assert idx(0, 10, 20) == []


def test_imported_episode_is_actionless_in_a_store_with_actions(tmp_path):
    write_video(tmp_path / "a.mp4", squares(10), fps=20)
    with EpisodeStore.create(tmp_path / "d.zarr", default_features(pixels=64)) as store:
        (i,) = import_videos(store, [tmp_path / "a.mp4"], "push")
        ep = store.episode(i)
        assert store.meta(i)["has_actions"] is False
        assert store.record(i)["present"] == {specs.PIXELS: 10}
    assert ep[specs.PIXELS].shape == (10, 64, 64, 3)
    assert ep["action_mask"].shape == (10,) and not ep["action_mask"].any()
    assert np.isnan(ep[specs.ACTION]).all() and np.isnan(ep[specs.STATE]).all()


# ---------------------------------------------------------------------------- errors (API)
def test_api_errors(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x01 not a video" * 100)
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    (tmp_path / "empty").mkdir()
    write_video(tmp_path / "a.mp4", squares(4), fps=20)
    with pytest.raises(VideoError, match="cannot read video"):
        FrameSource(tmp_path / "bad.mp4")
    with pytest.raises(VideoError, match="unsupported file type '.gif'"):
        FrameSource(tmp_path / "x.gif")
    with pytest.raises(VideoError, match="no images"):
        FrameSource(tmp_path / "empty")
    with EpisodeStore.create(tmp_path / "nopix.zarr", default_features()) as store:
        with pytest.raises(StoreError, match="no 'pixels' feature"):
            import_videos(store, [tmp_path / "a.mp4"], "x")
    with pixel_store(tmp_path / "d.zarr") as store:
        with pytest.raises(StoreError, match="out of range"):
            export_video(store, 0, tmp_path / "o.mp4")
        import_videos(store, [tmp_path / "a.mp4"], "x")
        with pytest.raises(StoreError, match="episode 3 out of range.*has 1 episodes"):
            export_video(store, 3, tmp_path / "o.mp4")


# ---------------------------------------------------------------------------- CLI
def test_cli_import_creates_then_appends_and_exports(tmp_path, capsys):
    import cv2

    write_video(tmp_path / "a.mp4", squares(20, 96, 128), fps=20)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(5):
        cv2.imwrite(str(folder / f"{k}.jpg"), squares(1, 64, 64)[0])
    out = tmp_path / "d.zarr"
    assert main(["data", "import-video", str(tmp_path / "a.mp4"), "--instruction", "push it", "--out", str(out), "--size", "32"]) == 0
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1 and "20 frames of 32x32 at 20 Hz" in line
    assert main(["data", "import-video", str(folder), str(tmp_path / "a.mp4"), "--instruction", "push it", "--fps", "10", "--out", str(out), "--source", "lab"]) == 0
    assert "episodes 1..2" in capsys.readouterr().out
    with EpisodeStore.open(out) as store:
        assert len(store) == 3 and list(store.features) == [specs.PIXELS]
        assert store.features[specs.PIXELS].shape == (32, 32, 3) and store.control_hz == 20
        assert [store.record(i)["length"] for i in range(3)] == [20, 10, 40]
        assert [m["source"] for m in store.metas()] == ["video", "lab", "lab"]
        assert "import-video" in store.attrs["provenance"]["command"]
    mp4 = tmp_path / "e.mp4"
    assert main(["data", "export-video", str(out), "--episode", "2", "--out", str(mp4)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    frames, fps = read_video(mp4)
    assert frames.shape == (40, 32, 32, 3) and fps == 20


@pytest.mark.parametrize(
    "args, needle",
    [
        (["import-video", "{tmp}/missing.mp4", "--instruction", "x", "--out", "{tmp}/o.zarr"], "no such file"),
        (["import-video", "{tmp}/x.gif", "--instruction", "x", "--out", "{tmp}/o.zarr"], "unsupported file type"),
        (["import-video", "{tmp}/bad.mp4", "--instruction", "x", "--out", "{tmp}/o.zarr"], "cannot read video"),
        (["import-video", "{tmp}/empty", "--instruction", "x", "--fps", "5", "--out", "{tmp}/o.zarr"], "no images"),
        (["import-video", "{tmp}/imgs", "--instruction", "x", "--out", "{tmp}/o.zarr"], "give it with --fps"),
        (["import-video", "{tmp}/a.mp4", "--out", "{tmp}/o.zarr"], "--instruction is required"),
        (["import-video", "{tmp}/a.mp4", "--instruction", "x"], "--out is required"),
        (["import-video", "{tmp}/a.mp4", "--instruction", "x", "--out", "{tmp}/o.zarr", "--fps", "0"], "positive"),
        (["import-video", "{tmp}/a.mp4", "--instruction", "x", "--out", "{tmp}/o.zarr", "--size", "33"], "even number"),
        (["import-video", "{tmp}/a.mp4", "--instruction", "x", "--out", "{tmp}/nopix.zarr"], "no 'pixels' feature"),
        (["import-video", "{tmp}/a.mp4", "--instruction", "x", "--out", "{tmp}/pix.zarr", "--size", "128"], "leave out --size"),
        (["export-video", "{tmp}/pix.zarr", "--episode", "7", "--out", "{tmp}/e.mp4"], "out of range"),
        (["export-video", "{tmp}/none.zarr", "--out", "{tmp}/e.mp4"], "no episode store"),
        (["export-video", "{tmp}/nopix.zarr", "--out", "{tmp}/e.mp4"], "no 'pixels' feature"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, args, needle):
    import cv2

    (tmp_path / "bad.mp4").write_bytes(b"\x00garbage" * 200)
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    (tmp_path / "empty").mkdir()
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    write_video(tmp_path / "a.mp4", squares(4), fps=20)
    EpisodeStore.create(tmp_path / "nopix.zarr", default_features()).close()
    pixel_store(tmp_path / "pix.zarr").close()
    capsys.readouterr()
    assert main(["data", *(a.replace("{tmp}", str(tmp_path)) for a in args)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("embodied: error:") and needle in err, err
    assert not (tmp_path / "o.zarr").exists()  # a failed import leaves no new store behind


def test_cli_failed_import_into_new_store_removes_it(tmp_path, capsys, monkeypatch):
    import embodied.datasets.video as video

    write_video(tmp_path / "a.mp4", squares(4), fps=20)

    def broken(*a, **k):
        raise VideoError("decoder gave up")

    monkeypatch.setattr(video, "fit_frame", broken)
    assert main(["data", "import-video", str(tmp_path / "a.mp4"), "--instruction", "x", "--out", str(tmp_path / "o.zarr")]) == 2
    assert "decoder gave up" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_truncated_video_is_an_error(tmp_path):
    rng = np.random.default_rng(0)
    write_video(tmp_path / "a.mp4", rng.integers(0, 255, (60, 64, 64, 3), dtype=np.uint8), fps=20)
    data = (tmp_path / "a.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pixel_store(tmp_path / "d.zarr") as store:
        with pytest.raises(VideoError, match="truncated"):
            import_videos(store, [tmp_path / "cut.mp4"], "x")
        assert len(store) == 0
