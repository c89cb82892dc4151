"""`embodied data info|verify|repair|merge|split|filter|delete|card` over small synthetic stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embodied import specs
from embodied.cli import main
from embodied.datasets import tools
from embodied.datasets.store import EpisodeStore, default_features

CHUNK = 8
# (env, instruction, source, policy, valid, success, length, has_actions)
EPISODES = [
    ("embodied/A-v0", "push the red cube", "alice", "expert", True, True, 12, True),
    ("embodied/A-v0", "push the red cube", "alice", "noisy:0.3", True, False, 9, True),
    ("embodied/A-v0", "reach the blue zone", "bob", "expert", True, True, 20, True),
    ("embodied/B-v0", "reach the blue zone", "bob", "random", False, False, 5, True),
    ("embodied/B-v0", "stack the ball", "alice", "expert", True, True, 17, True),
    ("embodied/B-v0", "stack the ball", "video-import", "", True, False, 11, False),
]


def episode_steps(rng: np.random.Generator, length: int, actions: bool, pixels: int = 16) -> dict[str, np.ndarray]:
    steps = {
        specs.STATE: rng.normal(size=(length, specs.STATE_DIM)).astype(np.float32),
        specs.PIXELS: rng.integers(0, 255, (length, pixels, pixels, 3), dtype=np.uint8),
    }
    if actions:  # the final observation has no action
        steps[specs.ACTION] = rng.uniform(-1, 1, (length - 1, specs.ACTION_DIM)).astype(np.float32)
        steps[specs.REWARD] = rng.normal(size=length - 1).astype(np.float32)
        steps[specs.COST] = np.zeros(length - 1, np.float32)
        steps[specs.SUCCESS] = np.arange(length - 1) == length - 2
    return steps


def make_store(path: Path, episodes=EPISODES, seed: int = 0, pixels: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    with EpisodeStore.create(path, default_features(pixels=pixels), chunk_len=CHUNK, provenance={"command": "test"}) as s:
        for n, (env, instr, source, policy, valid, success, length, actions) in enumerate(episodes):
            meta = {"instruction": instr, "env_id": env, "env_kwargs": {"layout": "rows"}, "seed": 100 + n, "policy": policy,
                    "source": source, "valid": valid, "success": success, "return": 1.0, "cost": 0.0}
            s.add_episode(episode_steps(rng, length, actions, pixels), meta)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path / "D.zarr")


def one_line_error(capsys, needle: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err
    return err


def data_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in (path / "data").rglob("*") if p.is_file() and "/c/" in str(p.relative_to(path))}


def assert_same_episode(a: EpisodeStore, i: int, b: EpisodeStore, j: int) -> None:
    ra, rb = a.record(i), b.record(j)
    assert ra["present"] == rb["present"] and ra["length"] == rb["length"]
    ea, eb = a.episode(i), b.episode(j)
    assert ea.keys() == eb.keys()
    for k in ea:
        np.testing.assert_array_equal(ea[k], eb[k])
    skip = {"committed", "merged_from"}
    assert {k: v for k, v in ra["meta"].items() if k not in skip} == {k: v for k, v in rb["meta"].items() if k not in skip}


# ---------------------------------------------------------------------------- info
def test_info_json_counts(store, capsys):
    assert main(["data", "info", str(store), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    lengths = [e[6] for e in EPISODES]
    assert r["episodes"] == 6 and r["valid"] == 5 and r["invalid"] == 1 and r["success"] == 3
    assert r["steps"] == sum(lengths)
    assert r["frames_with_actions"] == sum(n - 1 for *_, n, a in EPISODES if a)
    assert r["features"]["pixels"] == {"shape": [16, 16, 3], "dtype": "uint8", "observation": True, "frames": sum(lengths)}
    assert r["features"]["action"]["frames"] == r["frames_with_actions"]
    assert r["instructions"] == {"push the red cube": 2, "reach the blue zone": 2, "stack the ball": 2}
    assert r["envs"] == {"embodied/A-v0": 3, "embodied/B-v0": 3}
    assert r["sources"] == {"alice": 3, "bob": 2, "video-import": 1}
    assert r["policies"]["expert"] == 3
    assert r["bytes_stored"] > 0 and r["bytes_total"] > r["bytes_stored"]
    assert r["compression_ratio"] == pytest.approx(r["bytes_raw"] / r["bytes_stored"])
    assert r["control_hz"] == 20.0 and r["provenance"]["command"] == "test"


def test_info_text(store, capsys):
    assert main(["data", "info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "6 episodes (5 valid, 1 invalid" in out and "sources (3): alice 3, bob 2, video-import 1" in out


# ---------------------------------------------------------------------------- verify and repair
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_verify_ok_then_names_the_truncated_episode(store, capsys):
    with EpisodeStore.open(store) as s:
        chunks = sum(len(k) for i in range(len(s)) for k in s.chunk_keys(i).values())
        key = s.chunk_keys(2)["pixels"][1]  # episode 2 has 20 frames: 3 chunks of 8
    assert main(["data", "verify", str(store)]) == 0
    assert capsys.readouterr().out.strip() == f"ok: 6 episodes, {chunks} chunks checked"

    truncate(store / key)
    for extra in ([], ["--no-decode"]):
        assert main(["data", "verify", str(store), *extra]) == 1
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and "episode 2 (uid 2" in out[0] and "reach the blue zone" in out[0] and key in out[0] and "truncated" in out[0]
    (store / key).unlink()
    assert main(["data", "verify", str(store), "--json"]) == 1
    r = json.loads(capsys.readouterr().out)
    assert not r["ok"] and [p["episode"] for p in r["damaged"]] == [2] and f"{key} (missing)" in r["damaged"][0]["chunks"]


def test_repair_keeps_or_drops_damaged(store, capsys):
    with EpisodeStore.open(store) as s:
        bad = s.chunk_keys(1)
    truncate(store / bad["state"][0])
    (store / "stats.json").unlink()  # forces the writer to recompute statistics from the data
    (store / "data" / "state" / "c" / "99").mkdir(parents=True)
    (store / "data" / "state" / "c" / "99" / "0").write_bytes(b"left by a crashed writer")

    assert main(["data", "repair", str(store)]) == 1
    out = capsys.readouterr().out
    assert "episode 1 (uid 1" in out and "removed 1 uncommitted chunks" in out
    assert main(["data", "repair", str(store), "--drop-damaged"]) == 0
    assert "dropped 1 damaged episodes" in capsys.readouterr().out
    assert main(["data", "verify", str(store)]) == 0
    assert capsys.readouterr().out.startswith("ok: 5 episodes")
    assert not any((store / k).exists() for ks in bad.values() for k in ks)
    with EpisodeStore.open(store) as s:
        assert [r["uid"] for r in (s.record(i) for i in range(len(s)))] == [0, 2, 3, 4, 5]
        st = s.stats()[specs.STATE]
        valid = [s.episode(i)[specs.STATE] for i in range(len(s)) if s.meta(i)["valid"]]
        np.testing.assert_allclose(st.mean, np.concatenate(valid).mean(0), atol=1e-5)


def test_repair_drops_a_damaged_commit_record(store, capsys):
    records = sorted((store / "episodes").iterdir())
    (store / "index.json").unlink()
    records[3].write_text("{not json")
    assert main(["data", "info", str(store)]) == 1
    one_line_error(capsys, "is damaged")
    assert main(["data", "repair", str(store)]) == 1
    one_line_error(capsys, "--drop-damaged")
    assert main(["data", "repair", str(store), "--drop-damaged"]) == 0
    assert main(["data", "verify", str(store)]) == 0
    assert "ok: 5 episodes" in capsys.readouterr().out


# ---------------------------------------------------------------------------- merge, split, filter
def test_merge_keeps_episodes_and_features(tmp_path, capsys):
    a = make_store(tmp_path / "a.zarr", EPISODES[:4], seed=1)
    b = make_store(tmp_path / "b.zarr", EPISODES[4:], seed=2)
    out = tmp_path / "m.zarr"
    assert main(["data", "merge", str(a), str(b), "--out", str(out)]) == 0
    assert "6 episodes from 2 stores" in capsys.readouterr().out
    with EpisodeStore.open(out) as m, EpisodeStore.open(a) as sa, EpisodeStore.open(b) as sb:
        assert len(m) == 6 and m.features == sa.features
        for j in range(4):
            assert_same_episode(sa, j, m, j)
            assert m.meta(j)["merged_from"] == str(a)
        for j in range(2):
            assert_same_episode(sb, j, m, 4 + j)
        assert not m.meta(5)["has_actions"] and "action" not in m.record(5)["present"]  # actionless stays actionless
        assert not m.episode(5)["action_mask"].any() and m.episode(4)["action_mask"].sum() == 16
        assert [x["url"] for x in m.attrs["merged_from"]] == [str(a), str(b)]
        assert m.attrs["provenance"]["operation"] == "merge"
        assert main(["data", "verify", str(out)]) == 0


def test_merge_of_incompatible_stores_is_refused(tmp_path, capsys):
    a = make_store(tmp_path / "a.zarr", EPISODES[:2])
    b = make_store(tmp_path / "b.zarr", EPISODES[:2], pixels=32)
    assert main(["data", "merge", str(a), str(b), "--out", str(tmp_path / "m.zarr")]) == 2
    one_line_error(capsys, "cannot merge")
    assert not (tmp_path / "m.zarr").exists()
    assert main(["data", "merge", str(a), str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "m.zarr")]) == 2
    one_line_error(capsys, "no episode store at")
    assert main(["data", "merge", str(a), "--out", str(b)]) == 2
    one_line_error(capsys, "already exists")


def test_copies_refuse_a_damaged_episode(store, tmp_path, capsys):
    with EpisodeStore.open(store) as s:
        key = s.chunk_keys(4)["pixels"][0]
    truncate(store / key)
    assert main(["data", "merge", str(store), "--out", str(tmp_path / "m.zarr")]) == 1
    one_line_error(capsys, f"episode 4 (uid 4) of {store} is damaged: {key} (truncated")
    assert not (tmp_path / "m.zarr").exists()  # no half-written output is left


def test_split_is_deterministic_and_disjoint(store, tmp_path, capsys):
    outs = [tmp_path / "train.zarr", tmp_path / "val.zarr"]
    assert main(["data", "split", str(store), "--out", str(outs[0]), "--out", str(outs[1]), "--fraction", "0.5", "--seed", "3"]) == 0
    with EpisodeStore.open(store) as s:
        parts = tools.split_indices(s, [0.5, 0.5], seed=3)
        assert parts == tools.split_indices(s, [0.5, 0.5], seed=3) and sorted(parts[0] + parts[1]) == list(range(6))
        for out, idx in zip(outs, parts):
            with EpisodeStore.open(out) as o:
                assert len(o) == len(idx) == 3
                for j, i in enumerate(idx):
                    assert_same_episode(s, i, o, j)
        by_instr = tools.split_indices(s, [0.6, 0.4], seed=0, by="instruction")
        metas = s.metas()
        i0 = {metas[i]["instruction"] for i in by_instr[0]}
        i1 = {metas[i]["instruction"] for i in by_instr[1]}
        assert i0 and i1 and not i0 & i1 and len(i0) + len(i1) == 3
    assert main(["data", "split", str(store), "--out", str(tmp_path / "x.zarr"), "--out", str(tmp_path / "y.zarr"), "--fraction", "0.7", "0.7"]) == 2
    one_line_error(capsys, "sum to 1")
    assert not (tmp_path / "x.zarr").exists()


def test_filter_by_meta(store, tmp_path, capsys):
    out = tmp_path / "f.zarr"
    assert main(["data", "filter", str(store), "--out", str(out), "--env", "embodied/A*", "--valid-only", "--source", "bob"]) == 0
    assert "1 of 6 episodes" in capsys.readouterr().out
    with EpisodeStore.open(out) as f, EpisodeStore.open(store) as s:
        assert len(f) == 1 and f.meta(0)["instruction"] == "reach the blue zone"
        assert_same_episode(s, 2, f, 0)
        assert f.attrs["provenance"]["filter"]["valid_only"] is True
    out2 = tmp_path / "g.zarr"
    assert main(["data", "filter", str(store), "--out", str(out2), "--no-has-actions"]) == 0
    with EpisodeStore.open(out2) as g:
        assert len(g) == 1 and g.meta(0)["source"] == "video-import" and "action" not in g.record(0)["present"]
    with EpisodeStore.open(store) as s:
        assert tools.select(s, tools.EpisodeFilter(policy="noisy:*")) == [1]
        assert tools.select(s, tools.EpisodeFilter(success=True)) == [0, 2, 4]
    assert main(["data", "filter", str(store), "--out", str(tmp_path / "h.zarr"), "--env", "embodied/Z-v0"]) == 2
    one_line_error(capsys, "no episode of")
    assert not (tmp_path / "h.zarr").exists()


# ---------------------------------------------------------------------------- delete
def test_delete_by_source_removes_its_bytes_only(store, capsys):
    before = data_files(store)
    with EpisodeStore.open(store) as s:
        bob = {k for i in tools.select_by_source(s, "bob") for ks in s.chunk_keys(i).values() for k in ks}
    assert bob and bob <= before.keys()

    assert main(["data", "delete", str(store), "--source", "bob"]) == 0  # a dry run
    out = capsys.readouterr().out
    assert out.count("would remove episode") == 2 and "nothing removed" in out
    assert data_files(store) == before

    assert main(["data", "delete", str(store), "--source", "bob", "--yes"]) == 0
    assert "removed 2 episodes" in capsys.readouterr().out
    after = data_files(store)
    assert not bob & after.keys() and not any((store / k).exists() for k in bob)
    assert after == {k: v for k, v in before.items() if k not in bob}  # the rest byte for byte
    with EpisodeStore.open(store) as s:
        assert len(s) == 4 and "bob" not in {m["source"] for m in s.metas()}
    assert main(["data", "verify", str(store)]) == 0


def test_delete_by_index(store, capsys):
    with EpisodeStore.open(store) as s:
        uids = [s.record(i)["uid"] for i in range(len(s))]
        gone = {k for i in (0, 5) for ks in s.chunk_keys(i).values() for k in ks}
    before = data_files(store)
    assert main(["data", "delete", str(store), "--episode", "0", "--episode", "-1", "--yes"]) == 0
    assert data_files(store) == {k: v for k, v in before.items() if k not in gone}
    with EpisodeStore.open(store) as s:
        assert [s.record(i)["uid"] for i in range(len(s))] == uids[1:5]
    capsys.readouterr()
    assert main(["data", "delete", str(store)]) == 2
    one_line_error(capsys, "--episode I")
    assert main(["data", "delete", str(store), "--episode", "9", "--yes"]) == 2
    one_line_error(capsys, "out of range")
    assert main(["data", "delete", str(store), "--source", "carol", "--yes"]) == 2
    one_line_error(capsys, "sources there: alice (2), bob (2)")


# ---------------------------------------------------------------------------- card
def test_card_datasheet(store, tmp_path, capsys):
    assert main(["data", "card", str(store)]) == 0
    path = tmp_path / "D.datasheet.md"
    assert str(path) in capsys.readouterr().out
    text = path.read_text()
    for heading in ("# Datasheet: D.zarr", "## Sources", "## Environments", "## Collection policies", "## Instructions",
                    "## Features", "## Validity", "## Provenance", "## How to regenerate", "## Intended use and limitations"):
        assert heading in text
    assert "| alice | 3 | 50.0% | 3 | 2 |" in text and "| embodied/A-v0 | 3 |" in text
    assert "| push the red cube | 2 |" in text and "| noisy:0.3 | 1 |" in text
    assert "1 of 6 episodes are marked invalid" in text and "1 episodes have no actions" in text
    assert "| embodied/A-v0 | {\"layout\": \"rows\"} | expert | 2 | 100, 102 |" in text
    assert main(["data", "card", str(store), "--out", "-"]) == 0
    assert capsys.readouterr().out.strip() == text.strip()


# ---------------------------------------------------------------------------- errors and help
@pytest.mark.parametrize("cmd", [["info"], ["verify"], ["repair"], ["card"], ["delete", "--episode", "0"], ["filter", "--out", "x.zarr"]])
def test_missing_store_is_one_line(tmp_path, capsys, cmd):
    assert main(["data", cmd[0], str(tmp_path / "nope.zarr"), *cmd[1:]]) == 2
    one_line_error(capsys, f"no episode store at {tmp_path / 'nope.zarr'}")
    assert not (tmp_path / "nope.zarr").exists()


def test_help_lists_data_commands(capsys):
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    for sub in ("info", "verify", "repair", "merge", "split", "filter", "delete", "card"):
        assert sub in out
