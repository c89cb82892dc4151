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


def test_bench_data_reports_every_key_on_a_small_store(tmp_path):
    from embodied.bench_data import TARGETS, bench_data, format_result, missed_targets

    r = bench_data(tmp_path / "d.zarr", frames=300, window=4, batch=32, seconds=0.2, repeats=1)
    keys = ["append_frames_per_s", "compression_ratio", "sampler_windows_per_s", "naive_windows_per_s",
            "inram_windows_per_s", "sampler_vs_naive", "sampler_vs_inram", "sampler_ooc_windows_per_s", "bytes_per_frame"]
    assert all(r[k] > 0 for k in keys)
    assert r["frames"] >= 300 and r["sampler_in_ram"] is True
    assert r["compression_ratio"] > 8  # rendered frames compress well even on a small store
    assert abs(r["sampler_vs_naive"] - r["sampler_windows_per_s"] / r["naive_windows_per_s"]) < 1e-9
    assert set(TARGETS) <= set(r) and isinstance(missed_targets(r), list)
    assert "windows/s" in format_result(r)


def test_bench_train_reports_every_key_on_cpu(tmp_path):
    from embodied.bench_train import bench_train, format_result
    from embodied.collect import CollectSpec, collect

    store = str(tmp_path / "s.zarr")
    collect(CollectSpec(out=store, env_ids=("embodied/PointReach-v0",), episodes=10), progress=False)
    r = bench_train("tiny", window=4, batch=8, steps=3, warmup=1, workers=0, data=store, device="cpu")
    assert {"preset", "params", "tokens_per_s", "step_ms", "data_wait_fraction", "mfu"} <= r.keys()
    assert r["preset"] == "tiny" and r["params"] < 1e6 and r["mfu"] is None  # no MFU on CPU
    assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and 0 <= r["data_wait_fraction"] < 1
    assert abs(r["tokens_per_s"] - 8 * r["seq"] / (r["step_ms"] / 1e3)) / r["tokens_per_s"] < 1e-6
    assert "tokens/s" in format_result(r)


def test_bench_policy_reports_both_paths():
    from embodied.bench_policy import bench_policy, format_result

    r = bench_policy("tiny", context=8, steps=10, device="cpu")
    assert {"cached_p50_ms", "cached_p99_ms", "full_p50_ms", "full_p99_ms", "cache_speedup", "context", "params",
            "cached_cpu_p50_ms", "full_cpu_p50_ms", "cache_speedup_cpu", "threads"} <= r.keys()
    assert 0 < r["cached_p50_ms"] <= r["cached_p99_ms"] and 0 < r["full_p50_ms"] <= r["full_p99_ms"]
    assert 0 < r["cached_cpu_p50_ms"] and 0 < r["full_cpu_p50_ms"] and r["threads"] == 1
    assert abs(r["cache_speedup"] - r["full_p50_ms"] / r["cached_p50_ms"]) < 1e-9 and "with cache" in format_result(r)
    assert abs(r["cache_speedup_cpu"] - r["full_cpu_p50_ms"] / r["cached_cpu_p50_ms"]) < 1e-9
