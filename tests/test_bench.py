"""The env benchmark runs and reports every key (its numbers live in BENCHMARKS.md, not here)."""

from __future__ import annotations

import math

from embodied.bench import bench_envs, format_table

KEYS = {
    "embodiment", "env_steps_per_s", "raw_steps_per_s", "overhead", "pixel_fps",
    "raw_pixel_fps", "pixel_ratio", "reacher_v5_steps_per_s",
}


def test_bench_envs_reports_consistent_rows():
    rows = bench_envs(seconds=0.3, repeats=1, embodiments=("arm2",))
    assert len(rows) == 1
    r = rows[0]
    assert KEYS <= r.keys() and r["embodiment"] == "arm2"
    for k in KEYS - {"embodiment"}:
        assert math.isfinite(r[k]) and r[k] > 0
    assert math.isclose(r["overhead"], r["raw_steps_per_s"] / r["env_steps_per_s"])
    assert math.isclose(r["pixel_ratio"], r["pixel_fps"] / r["raw_pixel_fps"])
    assert "arm2" in format_table(rows)
