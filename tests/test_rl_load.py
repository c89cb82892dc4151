"""A saved `embodied rl` policy (rl.json + policy.safetensors) loads back and acts as it did in its run."""

from __future__ import annotations

import pytest


def test_a_saved_rl_policy_loads_and_acts_as_in_its_runs_evaluation(tmp_path, capsys):
    import json
    import pickle

    from embodied.cli import main
    from embodied.errors import ConfigError, EmbodiedError
    from embodied.rl import evaluate_rl, load_rl_policy

    out = tmp_path / "run"
    assert main(["rl", "--env", "embodied/PointReach-v0", "--instruction", "touch the red cube", "--reward", "true", "--steps", "2000",
                 "--envs", "2", "--episodes", "3", "--constraint", "stay out of the blue zone", "--cost-limit", "0.5", "--cost-critic",
                 "--egocentric", "--lidar", "--squash", "--net-arch", "32", "32", "--out", str(out), "--device", "cpu"]) == 0
    record = json.loads((out / "rl.json").read_text())
    policy, spec = load_rl_policy(out)
    assert spec.egocentric and spec.lidar and spec.squash and spec.net_arch == (32, 32) and spec.constraints[0].colour == "blue"
    again = evaluate_rl(spec, policy)["eval"]
    for key in ("success", "mean_return", "mean_cost", "mean_length", "saturated_actions"):
        assert again[key] == pytest.approx(record["eval"][key]), key

    # benchmarks/rl_probe.py reads the same policy: the same episodes, so the same cost
    import subprocess
    import sys
    from pathlib import Path

    probe = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / "rl_probe.py"), str(out), "--episodes", "3"],
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    p = json.loads(probe.stdout)
    assert p["mean_cost"] == pytest.approx(record["eval"]["mean_cost"]) and 0 <= p["crossing_starts"] <= 3
    assert len(p["sensitivity"]["keep_out_zones"]) == 2 and p["sensitivity"]["target"] >= 0

    with pytest.raises(ConfigError, match="no rl.json"):
        load_rl_policy(tmp_path / "nowhere")
    weights = (out / "policy.safetensors").read_bytes()
    (out / "policy.safetensors").write_bytes(weights[:8] + b"{\"x\": 1" + weights[15:])  # a tampered header
    with pytest.raises(EmbodiedError):
        load_rl_policy(out)
    sentinel = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    (out / "policy.safetensors").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(EmbodiedError, match="pickle"):
        load_rl_policy(out)
    assert not sentinel.exists()
