"""Test set-up: headless rendering and an offline Hugging Face hub for every test."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder of the tiny model trained for 4 steps on 10 PointReach episodes (state only)."""
    from embodied.collect import CollectSpec, collect
    from embodied.config import TrainConfig, TrainRunConfig
    from embodied.training_data import train_from_stores

    tmp = tmp_path_factory.mktemp("tiny_run")
    store = str(tmp / "d.zarr")
    collect(CollectSpec(out=store, env_ids=("embodied/PointReach-v0",), episodes=10), progress=False)
    run = tmp / "run"
    train_from_stores(TrainRunConfig(data=(store,), out=str(run), preset="tiny", workers=0, holdout=0.0),
                      TrainConfig(steps=4, batch_size=8, window=4, save_every=2), progress=False)
    return run
