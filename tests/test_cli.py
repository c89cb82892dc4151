"""The ``embodied`` command line: envs list / check / video, errors, help."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from embodied.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embodied", *args], capture_output=True, text=True)


def test_envs_list_one_line_per_env_id_first(capsys):
    from embodied.envs import ENVS

    assert main(["envs", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(ENVS)  # no header line
    for line in lines:
        env_id, split, *desc = line.split()
        assert env_id in ENVS and split == ENVS[env_id].split and desc


def test_envs_list_json_and_split_filter(capsys):
    assert main(["envs", "list", "--json", "--split", "heldout"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["split"] == "heldout" for r in rows)
    assert any("Arm3" in r["env_id"] for r in rows)


def test_envs_check_json(capsys):
    assert main(["envs", "check", "embodied/PointReach-v0", "embodied/Arm3PushDir-v0", "--episodes", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["env_id"] for r in rows] == ["embodied/PointReach-v0", "embodied/Arm3PushDir-v0"]
    for r in rows:
        assert {"env_id", "split", "check_env", "deterministic", "expert_success", "episodes"} <= r.keys()
        assert r["check_env"] is True and r["deterministic"] is True
        assert 0.0 <= r["expert_success"] <= 1.0 and r["episodes"] == 5
        lo, hi = r["expert_success_ci"]
        assert lo <= r["expert_success"] <= hi


@pytest.mark.parametrize(
    "args, needle",
    [
        (["envs", "check", "embodied/PointPushZon-v0"], "closest: embodied/PointPushZone-v0"),
        (["envs", "video", "nope"], "unknown env id"),
        (["envs", "check", "embodied/PointReach-v0", "--kw", "colour=red"], "allowed: embodiment"),
        (["envs", "check", "embodied/PointReach-v0", "--kw", "pixels"], "KEY=VALUE"),
        (["envs", "check", "--episodes", "many"], "invalid int value"),
        (["envs", "frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(args, needle):
    p = run(*args)
    assert p.returncode == 2
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert "Traceback" not in p.stderr + p.stdout


def test_envs_video_writes_h264(tmp_path):
    import av

    out = tmp_path / "x.mp4"
    assert main(["envs", "video", "embodied/Arm2PushZone-v0", "--out", str(out), "--size", "128"]) == 0
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        frames = sum(1 for _ in c.decode(s))
    assert frames > 10


def test_help_lists_commands():
    p = run("--help")
    assert p.returncode == 0
    for cmd in ("envs", "bench", "demo"):
        assert cmd in p.stdout
    p = run("envs", "check", "--help")
    assert "Expert episodes per environment" in p.stdout  # field docstrings become help
