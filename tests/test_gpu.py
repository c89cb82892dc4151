"""The CUDA path (bf16 autocast, fused AdamW, compiled blocks, device-resident batches). Run with `pytest -m gpu` on a GPU machine."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_cuda_is_there():
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"


def test_train_compiled_bf16_on_cuda_and_resume(tmp_path):
    from embodied.collect import CollectSpec, collect
    from embodied.config import TrainConfig, TrainRunConfig
    from embodied.training_data import train_from_stores

    store = str(tmp_path / "s.zarr")
    collect(CollectSpec(out=store, env_ids=("embodied/PointReach-v0",), episodes=40), progress=False)
    _store_embeddings(store)  # the GPU machine has no sentence encoder: embeddings travel with the data
    run = TrainRunConfig(data=(store,), out=str(tmp_path / "run"), preset="tiny", workers=0, holdout=0.2)
    cfg = TrainConfig(steps=30, batch_size=32, window=8, eval_every=0, save_every=15, warmup=5)
    r = train_from_stores(run, cfg, progress=False)
    assert r["device"].startswith("cuda") and r["step"] == 30 and r["bad_steps"] == 0
    assert r["metrics"]["action_nll"] is not None
    r2 = train_from_stores(TrainRunConfig(**{**run.__dict__, "resume": True}), TrainConfig(**{**cfg.__dict__, "steps": 40}), progress=False)
    assert r2["step"] == 40


def _store_embeddings(store: str, preset_name: str = "tiny") -> None:
    """A random table under the key `embodied train` reads for ``preset_name`` (the GPU machine has no encoder)."""
    import numpy as np

    from embodied.config import preset
    from embodied.datasets import EpisodeStore
    from embodied.language import encoder_key, with_tokens

    cfg = preset(preset_name)
    name = with_tokens(None, cfg.lang_tokens)
    with EpisodeStore.open(store, "a") as s:
        names = s.instructions()
        v = np.random.default_rng(0).normal(size=(len(names), cfg.goal_dim)).astype(np.float32)
        s.set_embeddings(encoder_key(name), names, v, {"encoder": name})


def test_bench_train_reports_mfu_on_cuda(tmp_path):
    from embodied.bench_train import bench_train
    from embodied.collect import CollectSpec, collect

    store = str(tmp_path / "s.zarr")
    collect(CollectSpec(out=store, env_ids=("embodied/PointReach-v0",), episodes=20), progress=False)
    r = bench_train("tiny", window=8, batch=32, steps=5, warmup=3, data=store)
    assert r["mfu"] is not None and 0 < r["mfu"] < 1 and r["data_source"] == "device-resident"


def test_policy_steps_replay_as_cuda_graphs_and_act_like_eager_steps():
    import warnings

    import numpy as np

    from conftest import fake_encode
    from embodied.config import preset
    from embodied.envs import make
    from embodied.model import TrajectoryModel
    from embodied.policies import FoundationPolicy

    env = make("embodied/PointPushZone-v0")
    for history in (False, True):
        torch.manual_seed(0)
        model = TrajectoryModel(preset("small", context=8, policy_history=history)).cuda()
        graphed = FoundationPolicy(model, fake_encode)
        plain = FoundationPolicy(model, fake_encode, graphs=False)
        assert graphed.graphs and graphed.device.type == "cuda"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for seed in (0, 1):  # the second episode replays the first one's graph on restarted buffers
                obs, _ = env.reset(seed=seed)
                for t in range(12):
                    a, _ = graphed.predict(obs, episode_start=np.array([t == 0]), deterministic=True)
                    b, _ = plain.predict(obs, episode_start=np.array([t == 0]), deterministic=True)
                    np.testing.assert_allclose(a, b, atol=1e-4)
                    obs, *_ = env.step(a)
        assert not [w for w in caught if "CUDA graph" in str(w.message)]  # a failed capture falls back with a warning
        assert graphed._graphed[0]._replay.__name__ == "replay"  # a captured graph, not the eager fallback
    env.close()
