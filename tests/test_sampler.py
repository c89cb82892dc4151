"""The window sampler: batch contents against the store, masks, padding, determinism, workers, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embodied.datasets.sampler import SamplerConfig, WindowSampler, make_loader
from embodied.datasets.store import EpisodeStore, Feature, StoreError, default_features

FEATURES = default_features(pixels=None) | {"pixels": Feature((8, 8, 3), "uint8", observation=True)}


def _episode(rng: np.random.Generator, length: int, actions: bool = True) -> dict[str, np.ndarray]:
    ep = {
        "state": rng.normal(size=(length, 90)).astype(np.float32),
        "pixels": rng.integers(0, 255, (length, 8, 8, 3), dtype=np.uint8),
    }
    if actions:  # a rollout: the final observation has no action
        ep |= {
            "action": rng.uniform(-1, 1, (length - 1, 2)).astype(np.float32),
            "reward": rng.normal(size=length - 1).astype(np.float32),
            "cost": np.zeros(length - 1, np.float32),
            "success": np.arange(length - 1) == length - 2,
        }
    return ep


@pytest.fixture
def store(tmp_path):
    """12 episodes: lengths 3..40, one actionless, one invalid, two instructions; chunk_len 8."""
    rng = np.random.default_rng(0)
    url = str(tmp_path / "d.zarr")
    eps = []
    with EpisodeStore.create(url, FEATURES, chunk_len=8) as w:
        for i, n in enumerate([3, 12, 40, 9, 17, 25, 8, 31, 5, 20, 14, 33]):
            ep = _episode(rng, n, actions=i != 4)
            w.add_episode(ep, {"instruction": f"task {i % 2}", "valid": i != 7})
            eps.append(ep)
    return url, eps


def _check_against_store(batch: dict[str, torch.Tensor], sampler: WindowSampler, eps: list[dict[str, np.ndarray]]) -> None:
    """Every window equals the frames of its episode at its timesteps; masks and padding are right."""
    B, T = batch["mask"].shape
    for b in range(B):
        e = sampler.episodes[int(batch["episode"][b])][1]
        ep, n = eps[e], len(eps[e]["state"])
        assert sampler.instructions[int(batch["instruction"][b])] == f"task {e % 2}"
        ts = batch["timestep"][b].numpy()
        inside = batch["mask"][b].numpy()
        assert inside.sum() == min(T, n) and inside[: min(T, n)].all()  # padding only at the end
        t = ts[inside]
        assert np.array_equal(t, np.arange(t[0], t[0] + len(t)))
        assert np.array_equal(batch["state"][b].numpy()[inside], ep["state"][t])
        assert np.array_equal(batch["pixels"][b].numpy()[inside], ep["pixels"][t])
        has_action = inside & (ts < len(ep.get("action", [])))
        assert np.array_equal(batch["action_mask"][b].numpy(), has_action)
        assert np.array_equal(batch["reward_mask"][b].numpy(), has_action)
        assert batch["state_mask"][b].numpy().tolist() == inside.tolist()
        if has_action.any():
            assert np.array_equal(batch["action"][b].numpy()[has_action], ep["action"][ts[has_action]])
        assert torch.isfinite(batch["action"][b]).all() and torch.isfinite(batch["reward"][b]).all()  # masked = 0, not NaN
        assert (batch["action"][b].numpy()[~has_action] == 0).all()


@pytest.mark.parametrize("in_ram,cover_edges", [(True, False), (False, False), (True, True), (False, True)])
def test_batches_match_the_store(store, in_ram, cover_edges):
    url, eps = store
    s = WindowSampler(url, SamplerConfig(window=10, batch_size=64, in_ram=in_ram, episodes_per_block=4, batches_per_block=3,
                                         cover_edges=cover_edges))
    assert s.in_ram is in_ram
    for k in range(4):
        b = s.batch(k)
        assert b["state"].shape == (64, 10, 90) and b["state"].dtype == torch.float32
        assert b["pixels"].shape == (64, 10, 8, 8, 3) and b["pixels"].dtype == torch.uint8
        assert b["action"].shape == (64, 10, 2) and b["success"].dtype == torch.bool
        _check_against_store(b, s, eps)


def test_invalid_episodes_are_never_sampled_and_short_ones_are_padded(store):
    url, eps = store
    s = WindowSampler(url, SamplerConfig(window=16, batch_size=512))
    assert 7 not in {i for _, i in s.episodes} and len(s.episodes) == 11
    seen = set()
    for k in range(6):
        b = s.batch(k)
        seen |= {s.episodes[int(e)][1] for e in b["episode"]}
    assert 7 not in seen and 0 in seen  # the 3-frame episode shows up, padded
    b = s.batch(0)
    short = [j for j in range(512) if s.episodes[int(b["episode"][j])][1] == 0]
    assert short and all(b["mask"][j].sum() == 3 for j in short)
    s_all = WindowSampler(url, SamplerConfig(window=4, valid_only=False))
    assert len(s_all.episodes) == 12


def _coverage(sampler: WindowSampler, window: int) -> dict[int, np.ndarray]:
    """For each episode (store index), how many of the sampler's window draws hold each of its frames."""
    f = sampler._ram
    cover = {i: np.zeros(n, dtype=np.int64) for (_, i), n in zip(sampler.episodes, f.lengths)}
    for slot, e in zip(f.starts, f.start_episode):
        first = slot - f.offsets[e]
        cover[sampler.episodes[e][1]][first: first + window] += 1
    return cover


def test_cover_edges_weighs_first_and_last_frames_like_middle_ones(store):
    url, eps = store
    T = 6
    plain = _coverage(WindowSampler(url, SamplerConfig(window=T, in_ram=True)), T)
    edges = _coverage(WindowSampler(url, SamplerConfig(window=T, in_ram=True, cover_edges=True)), T)
    long_eps = [i for i, c in plain.items() if len(c) >= 2 * T]
    assert long_eps
    for i in long_eps:
        middle = plain[i][T - 1 : len(plain[i]) - T + 1]
        assert (middle == T).all() and plain[i][0] == 1 and plain[i][-1] == 1  # the edge frames: one window each
        assert edges[i].min() == T and edges[i].max() == 2 * T - 1  # every frame in T to 2T - 1 windows
        assert edges[i][0] >= T and edges[i][-1] >= T and (edges[i][T : len(edges[i]) - T] == T).all()
    for i, c in edges.items():  # a short episode: its one window, drawn once per slot
        if len(c) < T:
            assert (c == len(c) + T - 1).all() and (plain[i] == 1).all()
    s = WindowSampler(url, SamplerConfig(window=T, batch_size=256, cover_edges=True))
    assert s.batches_per_pass == int(np.ceil(sum(len(c) + T - 1 for c in edges.values()) / 256))


def test_actionless_episode_has_masked_actions(store):
    url, eps = store
    s = WindowSampler(url, SamplerConfig(window=4, batch_size=256))
    b = s.batch(1)
    video = [j for j in range(256) if s.episodes[int(b["episode"][j])][1] == 4]
    assert video
    for j in video:
        assert not b["action_mask"][j].any() and not b["reward_mask"][j].any() and b["pixels_mask"][j].all()


def test_batches_are_a_function_of_seed_and_index(store):
    url, _ = store
    a = WindowSampler(url, SamplerConfig(window=6, batch_size=32, seed=3))
    b = WindowSampler(url, SamplerConfig(window=6, batch_size=32, seed=3))
    c = WindowSampler(url, SamplerConfig(window=6, batch_size=32, seed=4))
    for k in (0, 5):
        x, y = a.batch(k), b.batch(k)
        assert all(torch.equal(x[key], y[key]) for key in x)
    assert not torch.equal(a.batch(0)["state"], c.batch(0)["state"])
    assert not torch.equal(a.batch(0)["state"], a.batch(1)["state"])


@pytest.mark.parametrize("in_ram", [True, False])
def test_worker_loader_yields_batches_in_order_and_resumes(store, in_ram):
    url, _ = store
    cfg = SamplerConfig(window=6, batch_size=32, in_ram=in_ram, episodes_per_block=5, batches_per_block=4)
    ref = WindowSampler(url, cfg)
    got = []
    for batch in make_loader(WindowSampler(url, cfg, start_batch=3), num_workers=2):
        got.append(batch)
        if len(got) == 7:
            break
    for n, batch in enumerate(got):
        want = ref.batch(3 + n)
        assert batch.keys() == want.keys()
        assert all(torch.equal(batch[k], want[k]) for k in want), f"batch {3 + n} differs"


def test_several_stores_with_different_features(store, tmp_path):
    url, eps = store
    rng = np.random.default_rng(1)
    url2 = str(tmp_path / "video.zarr")
    frames = rng.integers(0, 255, (30, 8, 8, 3), dtype=np.uint8)
    with EpisodeStore.create(url2, {"pixels": FEATURES["pixels"]}, chunk_len=8) as w:
        w.add_episode({"pixels": frames}, {"instruction": "a video"})
    s = WindowSampler([url, url2], SamplerConfig(window=5, batch_size=256))
    assert "a video" in s.instructions and len(s.episodes) == 12
    b = s.batch(0)
    vid = [j for j in range(256) if s.episodes[int(b["episode"][j])][0] == 1]
    assert vid
    for j in vid:
        assert not b["state_mask"][j].any() and not b["action_mask"][j].any() and b["pixels_mask"][j].all()
        t = b["timestep"][j].numpy()
        assert np.array_equal(b["pixels"][j].numpy(), frames[t])
        assert (b["state"][j] == 0).all()


def test_bad_requests_are_clear_errors(store, tmp_path):
    url, _ = store
    with pytest.raises(StoreError, match="no store has feature"):
        WindowSampler(url, SamplerConfig(keys=("state", "depth")))
    with pytest.raises(StoreError, match="window must be >= 1"):
        SamplerConfig(window=0)
    empty = str(tmp_path / "empty.zarr")
    EpisodeStore.create(empty, FEATURES).close()
    with pytest.raises(StoreError, match="no valid episodes"):
        WindowSampler(empty)
    with pytest.raises(StoreError, match="no episode store"):
        WindowSampler(str(tmp_path / "missing.zarr"))


def test_keys_select_features_and_ram_budget_picks_the_mode(store):
    url, _ = store
    s = WindowSampler(url, SamplerConfig(keys=("state", "action"), window=4, batch_size=8))
    b = s.batch(0)
    assert "pixels" not in b and {"state", "action", "state_mask", "action_mask", "mask"} <= set(b)
    tiny = WindowSampler(url, SamplerConfig(window=4, ram_budget_gb=1e-9))
    assert not tiny.in_ram


def test_holdout_split_is_disjoint_and_stable(store):
    url, _ = store
    tr = WindowSampler(url, SamplerConfig(window=4, holdout=0.3, valid_only=False))
    ho = WindowSampler(url, SamplerConfig(window=4, holdout=0.3, part="heldout", valid_only=False))
    a, b = {i for _, i in tr.episodes}, {i for _, i in ho.episodes}
    assert a and b and not (a & b) and a | b == set(range(12))
    assert {i for _, i in WindowSampler(url, SamplerConfig(window=4, holdout=0.3, part="heldout", valid_only=False)).episodes} == b


def test_shards_of_a_global_batch_are_its_interleaved_rows(store):
    url, _ = store
    whole = WindowSampler(url, SamplerConfig(window=4, batch_size=8)).batch(3)
    parts = [WindowSampler(url, SamplerConfig(window=4, batch_size=4, shard=(r, 2))).batch(3) for r in range(2)]
    for k in whole:
        assert torch.equal(whole[k][0::2], parts[0][k]) and torch.equal(whole[k][1::2], parts[1][k])


def test_device_resident_batches_equal_host_batches(store):
    from embodied.datasets.sampler import DeviceWindows

    url, _ = store
    s = WindowSampler(url, SamplerConfig(window=6, batch_size=16, seed=2))
    d = DeviceWindows(s, "cpu")
    for k in (0, 7):
        a, b = s.batch(k), d.batch(k)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    d.start_batch = 3
    assert torch.equal(next(iter(d))["state"], s.batch(3)["state"])
    with pytest.raises(StoreError, match="in-RAM"):
        DeviceWindows(WindowSampler(url, SamplerConfig(window=4, in_ram=False)), "cpu")
