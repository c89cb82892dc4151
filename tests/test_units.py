"""Small units: Wilson intervals, config parsing, video round trip."""

from __future__ import annotations

import numpy as np
import pytest

from embodied.config import EnvsCheckConfig, field_docs, parse_kv
from embodied.errors import ConfigError
from embodied.evaluate import wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(95, 100)
    assert lo == pytest.approx(0.8882, abs=1e-3) and hi == pytest.approx(0.9785, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_parse_kv_json_values_never_eval():
    assert parse_kv(("pixels=64", "layout=rows", "fragile=true", "speed_limit=null", "x=__import__('os')")) == {
        "pixels": 64, "layout": "rows", "fragile": True, "speed_limit": None, "x": "__import__('os')",
    }
    with pytest.raises(ConfigError):
        parse_kv(("novalue",))


def test_field_docstrings_are_read():
    docs = field_docs(EnvsCheckConfig)
    assert docs["episodes"].startswith("Expert episodes")


def test_video_round_trip(tmp_path):
    from embodied.datasets.video import read_video, write_video

    rng = np.random.default_rng(0)
    frames = [np.full((64, 64, 3), 20 * i, np.uint8) + rng.integers(0, 3, (64, 64, 3), dtype=np.uint8) for i in range(12)]
    assert write_video(tmp_path / "v.mp4", frames, fps=10) == 12
    back, fps = read_video(tmp_path / "v.mp4")
    assert back.shape == (12, 64, 64, 3) and fps == pytest.approx(10)
    assert np.abs(back.astype(int) - np.stack(frames).astype(int)).mean() < 4  # within codec loss
    with pytest.raises(ValueError):
        write_video(tmp_path / "odd.mp4", [np.zeros((63, 64, 3), np.uint8)])
    assert not (tmp_path / "odd.mp4").exists()
