"""Behaviour of the episode store (datasets/store.py): round trips, crash safety under kill -9,
damaged chunks, the one-writer lock, readers during appends, a stateful model check, statistics."""

from __future__ import annotations

import inspect
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from embodied.datasets.files import StoreFiles
from embodied.datasets.store import (
    CorruptEpisodeError,
    EpisodeStore,
    Feature,
    StoreError,
    StoreLockedError,
    default_features,
)

REPO = Path(__file__).resolve().parents[1]
CHUNK = 8
PIX = 16
FEATURES = default_features(pixels=PIX)


# ---------------------------------------------------------------------------- helpers
def gen(n):
    """Episode number ``n`` of a fixed sequence: (steps, meta). Self-contained, since child processes run its source.

    Lengths 1..26 frames (up to four 8-frame chunks); every third episode keeps its final
    observation without an action, every third has no actions at all, every fifth is invalid.
    """
    import numpy as np

    rng = np.random.default_rng(7919 * n + 1)
    length = int(rng.integers(1, 27))
    steps = {
        "state": rng.standard_normal((length, 90)).astype(np.float32),
        "pixels": rng.integers(0, 256, (length, 16, 16, 3), dtype=np.uint8),
    }
    kind = n % 3
    if kind != 2:
        na = length if kind == 0 else length - 1
        steps["action"] = rng.uniform(-1, 1, (na, 2)).astype(np.float32)
        steps["reward"] = rng.standard_normal(na).astype(np.float32)
        steps["cost"] = rng.random(na).astype(np.float32)
        steps["success"] = rng.random(na) < 0.3
    meta = {"instruction": f"push block {n % 4}", "seed": int(n), "env_id": "Reach-v0", "valid": n % 5 != 4}
    return steps, meta


def episode_length(steps, features=FEATURES):
    return max(len(v) for k, v in steps.items() if features[k].observation)


def assert_episode(got, steps, features=FEATURES):
    """``got`` (from ``episode``) holds exactly ``steps``, byte for byte, with absent frames masked and filled."""
    length = episode_length(steps, features)
    want_keys = set(features) | {f"{k}_mask" for k, f in features.items() if not f.observation}
    assert set(got) == want_keys
    for k, f in features.items():
        x = got[k]
        assert x.shape == (length, *f.shape), k
        assert x.dtype == np.dtype(f.dtype), k
        n = len(steps[k]) if k in steps else 0
        if n:
            assert x[:n].tobytes() == np.asarray(steps[k]).astype(f.dtype).tobytes(), f"{k} differs"
        rest = x[n:]
        if f.is_float:
            assert np.isnan(rest).all(), f"{k}: absent frames must be NaN"
        else:
            assert not rest.any(), f"{k}: absent frames must be 0"
        if not f.observation:
            mask = got[f"{k}_mask"]
            assert mask.dtype == np.bool_ and mask.tolist() == [True] * n + [False] * (length - n), f"{k}_mask"


def assert_meta(got, meta, steps):
    for k, v in meta.items():
        assert got[k] == v, k
    assert got["length"] == episode_length(steps)
    assert got["has_actions"] == (len(steps.get("action", ())) > 0)
    assert got["valid"] == meta.get("valid", True)


def chunk_files(store):
    return {k for k in store.files.walk("data") if "/c/" in k}


def expected_chunks(store):
    return {key for i in range(len(store)) for keys in store.chunk_keys(i).values() for key in keys}


def temp_files(store):
    return sorted(k for k in store.files.walk("") if ".partial" in k.rsplit("/", 1)[-1])


def valid_frames(episodes, name, features=FEATURES):
    """All valid (present, finite) frames of feature ``name`` over the valid episodes of ``episodes`` [(steps, meta)]."""
    rows = [np.asarray(s[name], np.float64)[: len(s[name])] for s, m in episodes if m.get("valid", True) and name in s and len(s[name])]
    shape = features[name].shape
    return np.concatenate(rows).reshape(-1, *shape) if rows else np.zeros((0, *shape))


def assert_stats(store, episodes, names=("state", "action", "reward", "cost")):
    stats = store.stats()
    for name in names:
        x = valid_frames(episodes, name)
        s = stats.get(name)
        count = s.count if s is not None else 0
        assert count == len(x), name
        if len(x):
            np.testing.assert_allclose(s.mean, x.mean(axis=0), atol=1e-6, rtol=0, err_msg=name)
            np.testing.assert_allclose(s.std, x.std(axis=0), atol=1e-6, rtol=0, err_msg=name)
            np.testing.assert_array_equal(s.min, x.min(axis=0))
            np.testing.assert_array_equal(s.max, x.max(axis=0))


@pytest.fixture
def mem_url():
    import fsspec

    name = f"store-test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


@pytest.fixture(params=["local", "memory"])
def url(request, tmp_path, mem_url):
    return str(tmp_path / "D.zarr") if request.param == "local" else mem_url


CHILD_PRELUDE = """\
import os, sys, time
import numpy as np
from embodied.datasets.store import EpisodeStore, StoreLockedError
"""


def child_script(tmp_path, body):
    """A python script (prelude, ``gen``, then ``body``) in ``tmp_path``; run it with :func:`spawn`."""
    path = tmp_path / f"child_{uuid.uuid4().hex[:8]}.py"
    path.write_text(CHILD_PRELUDE + inspect.getsource(gen) + textwrap.dedent(body))
    return path


def spawn(script, *args, stderr_path=None):
    err = open(stderr_path, "w") if stderr_path else subprocess.DEVNULL  # one pipe only, so stdout.read() sees every line
    p = subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
    if stderr_path:
        err.close()
    watchdog = threading.Timer(60, p.kill)  # never hang the suite on a stuck child
    watchdog.daemon = True
    watchdog.start()
    p.watchdog = watchdog
    return p


def finish(p, sig=None):
    """Signal (optionally) and reap ``p``; returns its remaining stdout as complete lines."""
    if sig is not None:
        os.kill(p.pid, sig)
    p.wait()
    p.watchdog.cancel()
    out = p.stdout.read()
    p.stdout.close()
    lines = out.split("\n")
    return lines[:-1]  # the text after the last newline is a line the kill cut off


def wait_line(p, expected):
    line = p.stdout.readline()
    assert line == expected + "\n", f"child said {line!r} instead of {expected!r}"


# ---------------------------------------------------------------------------- 1. round trips
def test_round_trip_local_and_memory(url):
    episodes = [gen(n) for n in range(9)]
    with EpisodeStore.create(url, FEATURES, control_hz=10.0, chunk_len=CHUNK, provenance={"command": "pytest"}) as w:
        for n, (steps, meta) in enumerate(episodes):
            assert w.add_episode(steps, meta) == n
        assert len(w) == len(episodes)
    with EpisodeStore.open(url) as r:
        assert len(r) == len(episodes)
        assert r.features == FEATURES and r.chunk_len == CHUNK and r.control_hz == 10.0
        assert r.attrs["provenance"]["command"] == "pytest"
        assert r.num_frames == sum(episode_length(s) for s, _ in episodes)
        assert r.instructions() == sorted({m["instruction"] for _, m in episodes})
        for i, (steps, meta) in enumerate(episodes):
            assert_episode(r.episode(i), steps)
            assert_meta(r.meta(i), meta, steps)
            assert r.record(i)["length"] == episode_length(steps)
        assert_episode(r.episode(-1), episodes[-1][0])
        with pytest.raises(IndexError):
            r.episode(len(episodes))
        sub = r.episode(3, keys=["state", "action"])
        assert set(sub) == {"state", "action", "action_mask"}
        assert r.verify() == []


def test_actionless_and_final_observation_episodes_are_masked(url):
    rng = np.random.default_rng(0)
    length = 2 * CHUNK + 3
    state = rng.standard_normal((length, 90)).astype(np.float32)
    pixels = rng.integers(0, 256, (length, PIX, PIX, 3), dtype=np.uint8)
    action = rng.uniform(-1, 1, (length - 1, 2)).astype(np.float32)
    with EpisodeStore.create(url, FEATURES, chunk_len=CHUNK) as w:
        i = w.add_episode({"state": state, "pixels": pixels}, {"source": "video"})
        j = w.add_episode({"state": state, "pixels": pixels, "action": action, "reward": np.ones(length - 1)}, {})
        k = w.add_episode({"state": state[:1], "pixels": pixels[:1], "action": action[:0]}, {})  # a one-frame rollout
    with EpisodeStore.open(url) as r:
        e = r.episode(i)
        assert not e["action_mask"].any() and np.isnan(e["action"]).all() and e["action"].shape == (length, 2)
        assert not e["success_mask"].any() and not e["success"].any()
        assert e["state"].tobytes() == state.tobytes() and e["pixels"].tobytes() == pixels.tobytes()
        assert r.meta(i)["has_actions"] is False and r.meta(i)["source"] == "video"
        e = r.episode(j)
        assert e["action_mask"].tolist() == [True] * (length - 1) + [False]
        assert e["action"][:-1].tobytes() == action.tobytes() and np.isnan(e["action"][-1]).all()
        assert e["reward"].dtype == np.float32 and (e["reward"][:-1] == 1).all() and np.isnan(e["reward"][-1])
        assert not e["cost_mask"].any()
        assert r.meta(j)["has_actions"] is True
        e = r.episode(k)
        assert len(e["state"]) == 1 and not e["action_mask"].any() and r.meta(k)["has_actions"] is False


def test_list_of_step_dicts_round_trip(tmp_path):
    steps, meta = gen(1)  # a final-observation episode
    n = len(steps["state"])
    frames = [{k: v[t] for k, v in steps.items() if t < len(v)} for t in range(n)]
    with EpisodeStore.create(tmp_path / "D.zarr", FEATURES, chunk_len=CHUNK) as w:
        i = w.add_episode(frames, meta)
        assert_episode(w.episode(i), steps)


def test_custom_features_and_dtypes(mem_url):
    feats = {
        "state": Feature((3,), "float64", observation=True),
        "depth": Feature((4, 4), "uint16", observation=True),
        "action": Feature((), "int8"),
    }
    steps = {
        "state": np.arange(33, dtype=np.float64).reshape(11, 3) / 7,
        "depth": np.arange(11 * 16, dtype=np.uint16).reshape(11, 4, 4) * 300,
        "action": np.arange(10, dtype=np.int8) - 5,
    }
    with EpisodeStore.create(mem_url, feats, chunk_len=4) as w:
        w.add_episode(steps, {"note": np.float32(0.5), "ids": np.arange(3)})
    with EpisodeStore.open(mem_url) as r:
        assert r.features == feats
        assert_episode(r.episode(0), steps, feats)
        assert r.meta(0)["note"] == 0.5 and r.meta(0)["ids"] == [0, 1, 2]  # numpy metadata becomes JSON


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"actoin": np.zeros((5, 2))}, ["unknown feature", "actoin"]),
        ({"state": np.zeros((5, 89))}, ["state", "shape"]),
        ({"state": np.zeros(5)}, ["state", "shape"]),
        ({"pixels": np.zeros((5, PIX + 1, PIX, 3), np.uint8)}, ["pixels", "shape"]),
        ({"reward": np.float32(1.0)}, ["reward"]),
        ({"pixels": np.zeros((4, PIX, PIX, 3), np.uint8)}, ["pixels", "4 frames", "5"]),
        ({"action": np.zeros((6, 2))}, ["action", "6 frames"]),
        ({"action": np.zeros((3, 2))}, ["action", "3 frames"]),
        ({"pixels": np.full((5, PIX, PIX, 3), np.nan)}, ["pixels", "NaN"]),
    ],
)
def test_bad_episodes_raise_store_error(mem_url, bad, words):
    good = {"state": np.zeros((5, 90), np.float32)}
    with EpisodeStore.create(mem_url, FEATURES, chunk_len=CHUNK) as w:
        with pytest.raises(StoreError) as err:
            w.add_episode({**good, **bad}, {})
        for word in words:
            assert word in str(err.value)
        assert len(w) == 0 and chunk_files(w) == set()  # nothing written
        with pytest.raises(StoreError, match="at least one"):
            w.add_episode({}, {})
        with pytest.raises(StoreError, match="at least one frame"):
            w.add_episode({"state": np.zeros((0, 90))}, {})
        assert w.add_episode(good, {}) == 0


@pytest.mark.parametrize("damage", [b"{not json", b'{"zarr_format": 3}'])
def test_a_damaged_zarr_json_is_one_clear_error(tmp_path, damage):
    url = tmp_path / "D.zarr"
    with EpisodeStore.create(url, FEATURES, chunk_len=CHUNK) as w:
        w.add_episode(*gen(0))
    (url / "zarr.json").write_bytes(damage)
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match="zarr.json is damaged|not an embodied episode store"):
            EpisodeStore.open(url, mode)


def test_open_missing_and_create_existing(tmp_path, mem_url):
    for missing in (tmp_path / "nothing.zarr", f"{mem_url}-missing"):
        with pytest.raises(StoreError, match="no episode store"):
            EpisodeStore.open(missing)
        with pytest.raises(StoreError, match="no episode store"):
            EpisodeStore.open(missing, "a")
    with pytest.raises(StoreError, match="mode"):
        EpisodeStore.open(tmp_path / "x.zarr", "w")
    for url in (tmp_path / "D.zarr", mem_url):
        with EpisodeStore.create(url, FEATURES, chunk_len=CHUNK) as w:
            w.add_episode(*gen(0))
        with pytest.raises(StoreError, match="already exists"):
            EpisodeStore.create(url, FEATURES, chunk_len=CHUNK)
        with EpisodeStore.open(url) as r:
            assert len(r) == 1  # the refused create touched nothing
            with pytest.raises(StoreError, match="read-only"):
                r.add_episode(*gen(1))
            with pytest.raises(StoreError, match="read-only"):
                r.delete([0])
        with EpisodeStore.create(url, {"state": Feature((2,), "float32", observation=True)}, chunk_len=4, overwrite=True) as w:
            assert len(w) == 0 and set(w.features) == {"state"}
        with EpisodeStore.open(url) as r:
            assert len(r) == 0 and set(r.features) == {"state"}


def test_delete_removes_the_data_and_keeps_the_rest(url):
    episodes = [gen(n) for n in range(6)]
    with EpisodeStore.create(url, FEATURES, chunk_len=CHUNK) as w:
        for s, m in episodes:
            w.add_episode(s, m)
        gone = {k for i in (1, 5) for keys in w.chunk_keys(i).values() for k in keys}
        assert w.delete([1, 5]) == 2
        del episodes[5], episodes[1]
        assert len(w) == 4
        assert not gone & chunk_files(w)  # the deleted episodes' data left the store
        assert chunk_files(w) == expected_chunks(w)
        with pytest.raises(IndexError):
            w.delete([4])
        w.add_episode(*gen(6))  # appends after the gap is reused or not: it must read back intact either way
        episodes.append(gen(6))
    with EpisodeStore.open(url) as r:
        assert len(r) == len(episodes)
        for i, (s, m) in enumerate(episodes):
            assert_episode(r.episode(i), s)
            assert_meta(r.meta(i), m, s)
        assert r.verify() == []


# ---------------------------------------------------------------------------- 2. kill -9 a writer
APPEND_LOOP = """
store = EpisodeStore.open(sys.argv[1], "a")
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    n = len(store)
    steps, meta = gen(n)
    i = store.add_episode(steps, meta)
    sys.stdout.write(f"{i}\\n"); sys.stdout.flush()
    if len(sys.argv) > 2 and i + 1 >= int(sys.argv[2]):
        break
store.close()
"""


def test_kill9_writer_leaves_exactly_the_committed_episodes(tmp_path):
    rng = random.Random(20261126)
    script = child_script(tmp_path, APPEND_LOOP)
    trials = leftovers_seen = extra_seen = 0
    for series in range(3):
        url = str(tmp_path / f"kill{series}.zarr")
        EpisodeStore.create(url, FEATURES, chunk_len=CHUNK).close()
        committed = 0  # episodes known to be committed before this trial
        for trial in range(8):
            err_path = tmp_path / f"stderr-{series}-{trial}.txt"
            p = spawn(script, url, stderr_path=err_path)
            if trial % 4 == 3:  # any moment, also while the child opens and trims the last crash's leftovers
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                wait_line(p, "ready")
                time.sleep(rng.uniform(0.0, 0.12))
            lines = finish(p, signal.SIGKILL)
            assert "Traceback" not in err_path.read_text(), err_path.read_text()
            trials += 1
            printed = [int(x) for x in lines if x != "ready"]
            assert printed == list(range(committed, committed + len(printed)))
            with EpisodeStore.open(url) as r:  # a reader first: leftovers must be invisible
                m = len(r)
                # the child may die after the commit record and before printing: at most one unreported episode
                assert committed + len(printed) <= m <= committed + len(printed) + 1, (committed, printed, m)
                extra_seen += m == committed + len(printed) + 1
                for i in range(committed, m):
                    steps, meta = gen(i)
                    assert_episode(r.episode(i), steps)
                    assert_meta(r.meta(i), meta, steps)
                assert r.verify(decode=False) == []
                leftovers_seen += bool(chunk_files(r) - expected_chunks(r))
            committed = m
            if trial % 2 == 1:  # a writer reopens: it trims, and the store takes new episodes
                with EpisodeStore.open(url, "a") as w:
                    assert len(w) == m
                    assert chunk_files(w) == expected_chunks(w), "uncommitted chunks survived a writer's reopen"
                    assert temp_files(w) == []
                    assert w.add_episode(*gen(m)) == m
                    committed = m + 1
            # else: the next child opens over the leftovers and must trim them itself
        with EpisodeStore.open(url, "a") as w:
            assert chunk_files(w) == expected_chunks(w) and temp_files(w) == []
            assert w.verify() == []
            for i in range(len(w)):
                assert_episode(w.episode(i), gen(i)[0])
            assert_stats(w, [gen(i) for i in range(len(w))])
    assert trials >= 20
    assert leftovers_seen >= 3, f"only {leftovers_seen} kills landed mid-append; the test did not exercise crashes"


# ---------------------------------------------------------------------------- 3. damaged chunks
def _damage(files, key, how):
    if how == "delete":
        files.delete(key)
    elif files.local:
        path = files.path(key)
        os.truncate(path, os.path.getsize(path) // 2)
    else:
        data = files.read(key)
        files.fs.pipe_file(files.path(key), data[: len(data) // 2])


@pytest.mark.parametrize("how, feature", [("truncate", "pixels"), ("truncate", "state"), ("delete", "pixels"), ("delete", "action")])
def test_damaged_chunk_is_named_refused_and_dropped(url, how, feature):
    episodes = [gen(n) for n in range(6)]
    with EpisodeStore.create(url, FEATURES, chunk_len=CHUNK) as w:
        for s, m in episodes:
            w.add_episode(s, m)
    victim = max(i for i, (s, _) in enumerate(episodes) if feature in s and len(s[feature]) > CHUNK)
    with EpisodeStore.open(url, "a") as w:
        key = w.chunk_keys(victim)[feature][1]  # not the first chunk: the data before it is fine
        _damage(w.files, key, how)
        for store in (w, EpisodeStore.open(url)):
            problems = store.verify()
            assert len(problems) == 1, problems
            (p,) = problems
            assert p["episode"] == victim and p["uid"] == store.record(victim)["uid"]
            assert p["instruction"] == episodes[victim][1]["instruction"]
            assert any(c.startswith(key) for c in p["chunks"]), f"verify does not name chunk {key}: {p['chunks']}"
            with pytest.raises(CorruptEpisodeError, match=f"episode {victim}"):
                store.episode(victim)
            with pytest.raises(CorruptEpisodeError):
                store.episode(victim, keys=[feature])
            for i, (s, _) in enumerate(episodes):
                if i != victim:
                    assert_episode(store.episode(i), s)
        report = w.repair()  # without drop_damaged: kept, and still reported
        assert report["damaged"] == 1 and report["dropped"] == 0 and len(w) == len(episodes)
        assert [p["episode"] for p in w.verify()] == [victim]
        with pytest.raises(CorruptEpisodeError):
            w.episode(victim)
        report = w.repair(drop_damaged=True)
        assert report["dropped"] == 1
        del episodes[victim]
        assert len(w) == len(episodes) and w.verify() == []
        assert chunk_files(w) == expected_chunks(w)
        assert_stats(w, episodes)
    with EpisodeStore.open(url) as r:
        assert r.verify() == []
        for i, (s, m) in enumerate(episodes):
            assert_episode(r.episode(i), s)
            assert_meta(r.meta(i), m, s)


def test_flipped_byte_inside_a_chunk_fails_its_checksum(tmp_path):
    """Damage that keeps a chunk's size (a flipped bit) is caught by the CRC-32C codec, not decoded into garbage."""
    url = str(tmp_path / "D.zarr")
    episodes = [gen(n) for n in range(4)]
    with EpisodeStore.create(url, FEATURES, chunk_len=CHUNK) as w:
        for s, m in episodes:
            w.add_episode(s, m)
        victim = next(i for i, (s, _) in enumerate(episodes) if "state" in s)
        key = w.chunk_keys(victim)["state"][0]
    path = tmp_path / "D.zarr" / key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with EpisodeStore.open(url) as r:
        assert r.verify(decode=False) == []  # sizes and headers look fine ...
        (p,) = r.verify()  # ... the checksum does not
        assert p["episode"] == victim and any(c.startswith(key) for c in p["chunks"])
        with pytest.raises(CorruptEpisodeError, match=f"episode {victim}"):
            r.episode(victim)


def test_damaged_commit_record_is_reported(tmp_path):
    url = tmp_path / "D.zarr"
    with EpisodeStore.create(url, FEATURES, chunk_len=CHUNK) as w:
        w.add_episode(*gen(0))
        name = w.files.names("episodes")[0]
    (url / "index.json").unlink()  # the cache would otherwise hide the record's damage
    (url / "episodes" / name).write_text('{"uid": 0, "sta')
    with pytest.raises(CorruptEpisodeError, match="repair"):
        EpisodeStore.open(url)


# ---------------------------------------------------------------------------- 4. the writer lock
def _assert_refusal(message):
    assert "already open for writing" in message
    assert "wait" in message and "--break-lock" in message  # says what to do


def test_second_writer_in_process_is_refused(url):
    w = EpisodeStore.create(url, FEATURES, chunk_len=CHUNK)
    w.add_episode(*gen(0))
    with pytest.raises(StoreLockedError) as err:
        EpisodeStore.open(url, "a")
    _assert_refusal(str(err.value))
    assert str(os.getpid()) in str(err.value)  # names the holder
    with pytest.raises(StoreLockedError):
        EpisodeStore.create(url, FEATURES, chunk_len=CHUNK, overwrite=True)  # nor may anyone wipe it meanwhile
    with EpisodeStore.open(url) as r:  # readers are welcome
        assert len(r) == 1
        assert_episode(r.episode(0), gen(0)[0])
    w.add_episode(*gen(1))  # the first writer is unharmed by the refusals
    w.close()
    with EpisodeStore.open(url, "a") as w2:
        assert len(w2) == 2
        w2.add_episode(*gen(2))
    with EpisodeStore.open(url) as r:
        for i in range(3):
            assert_episode(r.episode(i), gen(i)[0])


def test_memory_lock_of_a_dead_writer_is_broken_by_hand(mem_url):
    w = EpisodeStore.create(mem_url, FEATURES, chunk_len=CHUNK)
    w._closed = True  # the handle "dies": nothing releases its lock
    with pytest.raises(StoreLockedError) as err:
        EpisodeStore.open(mem_url, "a")
    _assert_refusal(str(err.value))
    StoreFiles(mem_url).break_lock()
    with EpisodeStore.open(mem_url, "a") as w2:
        w2.add_episode(*gen(0))
    # a stale lock naming a process on this host that is gone frees itself
    files = StoreFiles(mem_url)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    import socket

    files.fs.pipe_file(files.path("writer.lock"), json.dumps({"host": socket.gethostname(), "pid": int(dead)}).encode())
    with EpisodeStore.open(mem_url, "a") as w3:
        assert len(w3) == 1


HOLD = """
store = EpisodeStore.open(sys.argv[1], "a")
if sys.argv[2] == "add":
    store.add_episode(*gen(len(store)))
sys.stdout.write("ready\\n"); sys.stdout.flush()
if sys.argv[2] == "hold":
    time.sleep(60)
elif sys.argv[2] == "close":
    store.close()
# "add": exit without close(): the process ends with the store open
"""

TRY = """
try:
    store = EpisodeStore.open(sys.argv[1], "a")
except StoreLockedError as e:
    print("locked:", e)
else:
    store.add_episode(*gen(len(store)))
    store.close()
    print("wrote")
"""


def test_writer_lock_across_processes(tmp_path):
    url = tmp_path / "D.zarr"
    EpisodeStore.create(url, FEATURES, chunk_len=CHUNK).close()
    hold, attempt = child_script(tmp_path, HOLD), child_script(tmp_path, TRY)

    # a child holds the store: this process is refused, then gets in once the child is SIGKILLed
    p = spawn(hold, url, "hold")
    wait_line(p, "ready")
    with pytest.raises(StoreLockedError) as err:
        EpisodeStore.open(url, "a")
    _assert_refusal(str(err.value))
    assert f"process {p.pid}" in str(err.value)
    finish(p, signal.SIGKILL)
    with EpisodeStore.open(url, "a") as w:  # the kernel dropped the dead writer's flock
        # this process holds the store: a child is refused, and gets in after close
        (line,) = finish(spawn(attempt, url))
        assert line.startswith("locked:") and str(os.getpid()) in line
        _assert_refusal(line)
        assert len(w) == 0
    (line,) = finish(spawn(attempt, url))
    assert line == "wrote"

    # a writer that exits without close() frees the lock, quietly
    err_path = tmp_path / "stderr.txt"
    assert finish(spawn(hold, url, "add", stderr_path=err_path)) == ["ready"]
    assert err_path.read_text() == "", err_path.read_text()
    with EpisodeStore.open(url, "a") as w:
        assert len(w) == 2
        for i in range(2):
            assert_episode(w.episode(i), gen(i)[0])


def test_writer_reopen_removes_temp_files_a_crash_left(tmp_path):
    url = tmp_path / "D.zarr"
    with EpisodeStore.create(url, FEATURES, chunk_len=CHUNK) as w:
        w.add_episode(*gen(0))
        name = w.files.names("episodes")[0]
    leftovers = [
        f"episodes/{name[:-5]}x.json.0123456789ab.partial",  # a commit record cut off mid-write
        "stats.json.0123456789ab.partial",
        "index.json.0123456789ab.partial",
        "data/state/c/5/0.0123456789abcdef.partial",
    ]
    for key in leftovers:
        (url / key).parent.mkdir(parents=True, exist_ok=True)
        (url / key).write_bytes(b'{"uid": 1')
    with EpisodeStore.open(url) as r:
        assert len(r) == 1 and r.verify() == []  # readers ignore them
    with EpisodeStore.open(url, "a") as w:
        assert temp_files(w) == []
        assert len(w) == 1
        assert_episode(w.episode(0), gen(0)[0])


# ---------------------------------------------------------------------------- 5. a reader during appends
def test_reader_sees_a_consistent_prefix_while_a_writer_appends(tmp_path):
    url = tmp_path / "D.zarr"
    total = 40
    EpisodeStore.create(url, FEATURES, chunk_len=CHUNK).close()
    expected = [gen(i) for i in range(total)]
    reader = EpisodeStore.open(url)
    assert len(reader) == 0
    p = spawn(child_script(tmp_path, APPEND_LOOP), url, total)
    wait_line(p, "ready")
    seen = []
    while True:
        done = p.poll() is not None
        n = reader.refresh()
        assert not seen or n >= seen[-1], "episodes disappeared"
        seen.append(n)
        for i in range(n):  # every visible episode is complete and exactly what was written
            steps, meta = expected[i]
            assert_episode(reader.episode(i), steps)
            assert_meta(reader.meta(i), meta, steps)
        if done:
            break
    lines = finish(p)
    assert p.returncode == 0 and lines[-1] == str(total - 1)
    assert seen[-1] == total
    assert len({n for n in seen if 0 < n < total}) >= 2, f"the reader never caught the writer mid-way: {seen}"
    assert reader.verify() == []
    assert_stats(reader, expected)
    reader.close()


def test_reader_refresh_after_delete_and_stats_stay_exact(tmp_path):
    url = tmp_path / "D.zarr"
    episodes = [gen(n) for n in range(5)]
    w = EpisodeStore.create(url, FEATURES, chunk_len=CHUNK)
    for s, m in episodes:
        w.add_episode(s, m)
    r = EpisodeStore.open(url)
    assert_stats(r, episodes)
    w.delete([0])
    del episodes[0]
    w.add_episode(*gen(9))
    episodes.append(gen(9))
    assert r.refresh() == len(episodes)
    for i, (s, _) in enumerate(episodes):
        assert_episode(r.episode(i), s)
    assert_stats(r, episodes)  # the deleted episode left the reader's statistics too
    w.close()
    r.close()


# ---------------------------------------------------------------------------- 7. statistics
def test_stats_match_numpy_after_appends_delete_and_reopen(url):
    episodes = [gen(n) for n in range(10)]
    assert any(not m["valid"] for _, m in episodes)
    with EpisodeStore.create(url, FEATURES, chunk_len=CHUNK) as w:
        for s, m in episodes:
            w.add_episode(s, m)
        assert_stats(w, episodes)
        # an invalid episode with wild values leaves no trace in the statistics
        wild = {"state": np.full((7, 90), 1e6, np.float32), "action": np.full((7, 2), -50, np.float32)}
        w.add_episode(wild, {"valid": False})
        episodes.append((wild, {"valid": False}))
        assert_stats(w, episodes)
        assert w.stats()["state"].max.max() < 1e3
        w.delete([2, 4])  # a valid episode and an invalid one (gen(4): 4 % 5 == 4)
        del episodes[4], episodes[2]
        assert_stats(w, episodes)
        w.add_episode(*gen(20))
        episodes.append(gen(20))
        assert_stats(w, episodes)
    with EpisodeStore.open(url) as r:
        assert_stats(r, episodes)
    with EpisodeStore.open(url, "a") as w:
        assert_stats(w, episodes)
        w.delete([len(w) - 1])
        episodes.pop()
    with EpisodeStore.open(url, "a") as w:
        assert_stats(w, episodes)
        w.delete([i for i, (_, m) in enumerate(episodes) if not m["valid"]])
        episodes = [e for e in episodes if e[1]["valid"]]
        assert_stats(w, episodes)


def test_stats_survive_a_lost_stats_file(tmp_path):
    url = tmp_path / "D.zarr"
    episodes = [gen(n) for n in range(4)]
    with EpisodeStore.create(url, FEATURES, chunk_len=CHUNK) as w:
        for s, m in episodes:
            w.add_episode(s, m)
    (url / "stats.json").unlink()
    with EpisodeStore.open(url) as r:
        assert_stats(r, episodes)
    (url / "stats.json").write_text("{not json")
    with EpisodeStore.open(url, "a") as w:
        assert_stats(w, episodes)
    assert json.loads((url / "stats.json").read_text())["features"]["state"]["count"] == len(valid_frames(episodes, "state"))


# ---------------------------------------------------------------------------- 6. a stateful model check
MACHINE_FEATURES = default_features(pixels=4)


def machine_episode(seed, length, kind, valid):
    rng = np.random.default_rng(seed)
    steps = {
        "state": rng.standard_normal((length, 90)).astype(np.float32),
        "pixels": rng.integers(0, 256, (length, 4, 4, 3), dtype=np.uint8),
    }
    if kind != "actionless":
        na = length if kind == "full" else length - 1
        steps["action"] = rng.uniform(-1, 1, (na, 2)).astype(np.float32)
        steps["reward"] = rng.standard_normal(na).astype(np.float32)
        steps["success"] = rng.random(na) < 0.5
    return steps, {"seed": seed, "valid": valid, "instruction": f"task {seed % 3}"}


class _Crash(BaseException):
    """The writer process dies here."""


class _DyingArray:
    """A Zarr array that dies after resizing and writing the first chunk of its frames."""

    def __init__(self, arr, chunk_len):
        self._arr, self._chunk_len = arr, chunk_len

    def __getattr__(self, name):
        return getattr(self._arr, name)

    def __setitem__(self, sl, x):
        self._arr[sl.start : sl.start + min(len(x), self._chunk_len)] = x[: self._chunk_len]
        raise _Crash


def crash_mid_append(store, steps, meta, cut):
    """``add_episode`` killed part-way: after ``cut // 2`` features are written (and, for an odd ``cut``,
    one more feature resized with its first chunk), or, when ``cut`` covers every feature, in the
    middle of writing the commit record. Leaves partial chunk files and no record, as a kill -9 does."""
    calls = [0]
    array = store.array
    nfeat = len(steps)

    def dying_array(name):
        k = calls[0]
        calls[0] += 1
        if k == cut // 2 and cut % 2 == 1:
            return _DyingArray(array(name), store.chunk_len)
        if k >= cut // 2:
            raise _Crash
        return array(name)

    def dying_write_json(key, obj):
        if key.startswith("episodes/") and store.files.local:  # killed inside the atomic write: a temp file remains
            os.makedirs(os.path.dirname(store.files.path(key)), exist_ok=True)
            with open(f"{store.files.path(key)}.0123456789ab.partial", "wb") as f:
                f.write(json.dumps(obj).encode()[:20])
        raise _Crash

    store.array = dying_array
    store.files.write_json = dying_write_json
    if cut >= 2 * nfeat:
        cut = 2 * nfeat + 2  # past every feature: dies at the record
    with pytest.raises(_Crash):
        store.add_episode(steps, meta)


class StoreMachine(RuleBasedStateMachine):
    """The store against a plain list of episodes, through adds, deletes, reopens and crashed writers."""

    def __init__(self):
        super().__init__()
        self.model: list[tuple[dict, dict]] = []
        self.store = None
        self.crashes = 0

    @initialize(backend=st.sampled_from(["local", "memory"]))
    def create(self, backend):
        import tempfile

        if backend == "local":
            self.tmp = tempfile.mkdtemp(prefix="store-machine-")
            self.url = f"{self.tmp}/D.zarr"
        else:
            self.tmp = None
            self.url = f"memory://store-machine-{uuid.uuid4().hex}"
        self.store = EpisodeStore.create(self.url, MACHINE_FEATURES, chunk_len=4)

    def teardown(self):
        import shutil

        if self.store is not None:
            self.store.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif getattr(self, "url", None):
            StoreFiles(self.url).remove_all()

    episodes = st.builds(
        machine_episode,
        seed=st.integers(0, 2**16),
        length=st.integers(1, 11),
        kind=st.sampled_from(["full", "final_obs", "actionless"]),
        valid=st.booleans(),
    )

    @rule(episode=episodes)
    def add(self, episode):
        assert self.store.add_episode(*episode) == len(self.model)
        self.model.append(episode)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        i = data.draw(st.integers(0, len(self.model) - 1), label="index")
        assert self.store.delete([i]) == 1
        del self.model[i]

    @rule()
    def reopen(self):
        self.store.close()
        self.store = EpisodeStore.open(self.url, "a")

    @rule(episode=episodes, cut=st.integers(0, 20))
    def kill(self, episode, cut):
        """The writer dies mid-append; a new writer takes over (after the lock frees itself, or is broken by hand)."""
        dead = self.store
        crash_mid_append(dead, *episode, cut)
        dead._closed = True  # a dead process runs no clean-up
        if dead.files.local:
            os.close(dead.files._lock_fd)  # what the kernel does when the process dies
            dead.files._lock_fd = None
        else:
            with pytest.raises(StoreLockedError):
                EpisodeStore.open(self.url, "a")
            StoreFiles(self.url).break_lock()
        self.store = None
        with EpisodeStore.open(self.url) as r:  # readers never see the half-written episode
            assert len(r) == len(self.model)
        self.store = EpisodeStore.open(self.url, "a")
        assert chunk_files(self.store) == expected_chunks(self.store)
        assert temp_files(self.store) == []
        self.crashes += 1

    @invariant()
    def matches_model(self):
        if self.store is None:
            return
        s = self.store
        assert len(s) == len(self.model)
        for i, (steps, meta) in enumerate(self.model):
            assert_episode(s.episode(i), steps, MACHINE_FEATURES)
            assert s.meta(i)["seed"] == meta["seed"] and s.meta(i)["valid"] == meta["valid"]
        stats = s.stats()
        state = valid_frames(self.model, "state", MACHINE_FEATURES)
        assert (stats["state"].count if "state" in stats else 0) == len(state)
        if len(state):
            np.testing.assert_allclose(stats["state"].mean, state.mean(axis=0), atol=1e-6, rtol=0)
        action = valid_frames(self.model, "action", MACHINE_FEATURES)
        assert (stats["action"].count if "action" in stats else 0) == len(action)
        assert s.verify() == []


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(
    max_examples=25, stateful_step_count=15, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
