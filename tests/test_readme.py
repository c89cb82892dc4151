"""The README's Python quickstart runs as written, and its first commands are the make targets."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_demo_and_test_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    lines = [ln.split("#")[0].strip() for ln in first_block.strip().splitlines()]
    assert lines == ["make demo", "make test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


def test_readme_quickstart_runs():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith("True ")  # the expert succeeded
    assert "(64, 64, 3)" in p.stdout


def test_readme_episode_store_snippet_runs(tmp_path):
    """The store and sampler snippet runs as written against a freshly collected D.zarr."""
    from embodied.collect import CollectSpec, collect

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next(b for b in blocks if "WindowSampler" in b)
    collect(CollectSpec(out=str(tmp_path / "D.zarr"), env_ids=("embodied/PointReach-v0",), episodes=3, pixels=64), progress=False)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("3 ")
