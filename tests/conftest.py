"""Test set-up: headless rendering and an offline Hugging Face hub for every test."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


import hashlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def fake_encode(texts, cfg=None):
    """A deterministic stand-in for the sentence encoder, laid out as the model reads it (``cfg``, default the
    tiny preset): a unit vector per sentence (hash of the text), then one vector per word (hash of the word)
    for the first ``lang_tokens`` words, zero rows after the last."""
    from embodied.config import preset

    cfg = cfg or preset("tiny")

    def vec(s):
        v = np.random.default_rng(int(hashlib.sha1(s.encode()).hexdigest()[:12], 16)).normal(size=cfg.lang_dim)
        return v / np.linalg.norm(v)

    out = []
    for t in texts:
        words = np.zeros((cfg.lang_tokens, cfg.lang_dim))
        for i, w in enumerate(t.split()[: cfg.lang_tokens]):
            words[i] = vec(w) * 4.0
        out.append(np.concatenate([vec(t), words.ravel()]))
    return np.asarray(out, dtype=np.float32).reshape(len(texts), cfg.goal_dim)


def train_tiny(folder, episodes: int = 10, holdout: float = 0.0, **train):
    """Collect ``episodes`` PointReach episodes (state only) into ``folder/d.zarr`` and train the tiny model on them
    into ``folder/run`` (4 steps unless ``train`` says otherwise); returns the run folder."""
    from embodied.collect import CollectSpec, collect
    from embodied.config import TrainConfig, TrainRunConfig
    from embodied.training_data import train_from_stores

    store = str(folder / "d.zarr")
    collect(CollectSpec(out=store, env_ids=("embodied/PointReach-v0",), episodes=episodes), progress=False)
    run = folder / "run"
    train_from_stores(TrainRunConfig(data=(store,), out=str(run), preset="tiny", workers=0, holdout=holdout),
                      TrainConfig(**{"steps": 4, "batch_size": 8, "window": 4, "save_every": 2, **train}), progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder of the tiny model trained for 4 steps on 10 PointReach episodes (state only)."""
    return train_tiny(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def report_inputs(tmp_path_factory):
    """A folder with ``run`` (the tiny model, 6 steps with held-out metrics every 3) and its evaluations on
    PointReach, ``eval-seen`` (2 episodes, one video) and ``eval-paraphrase`` (2 episodes, no video)."""
    from embodied.cli import main

    tmp = tmp_path_factory.mktemp("rep")
    run = train_tiny(tmp, episodes=20, holdout=0.2, steps=6, eval_every=3, save_every=3, log_every=2)
    for instr in ("seen", "paraphrase"):
        assert main(["eval", "--ckpt", str(run), "--env", "embodied/PointReach-v0", "--episodes", "2", "--instructions", instr,
                     "--videos", "1" if instr == "seen" else "0", "--out", str(tmp / f"eval-{instr}")]) == 0
    return tmp
