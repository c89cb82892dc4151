"""One battery over every registered environment: adding an env adds its tests.

check_env, seeded determinism, the env card, and the scripted expert's success (>= 95% of
100 seeded episodes, with no MuJoCo warnings and no invalid episodes).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from embodied import envs
from embodied.evaluate import check_determinism, rollout

ALL_IDS = envs.env_ids()


def test_suite_has_train_and_heldout_envs_for_every_embodiment_and_family():
    kinds = {(e.kwargs["embodiment"], e.kwargs["family"], e.split) for e in envs.ENVS.values()}
    for fam in ("reach", "push_zone", "push_dir"):
        for emb in ("point", "arm2"):
            assert (emb, fam, "train") in kinds and (emb, fam, "heldout") in kinds
        assert (("arm3", fam, "heldout")) in kinds and ("arm3", fam, "train") not in kinds
    for i in ALL_IDS:
        assert i.startswith("embodied/") and i.endswith("-v0")


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_check_env(env_id):
    env = envs.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_seeded_determinism(env_id):
    assert check_determinism(env_id, seed=3)


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_env_card(env_id):
    card = envs.card(env_id)
    assert card.startswith(env_id)
    for section in ("Action space", "Observation space", "Rewards", "Costs", "Episode end"):
        assert f"**{section}**" in card


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_expert_succeeds(env_id):
    env = envs.make(env_id)
    expert = envs.ScriptedExpert(env)
    runs = [rollout(env, expert, seed) for seed in range(100)]
    env.close()
    assert sum(r["success"] for r in runs) >= 95
    assert not any(r["warnings"] for r in runs)
    assert not any(r["invalid"] for r in runs)


def test_different_seeds_give_different_episodes():
    env = envs.make("embodied/PointPushZone-v0")
    a, _ = env.reset(seed=0)
    b, _ = env.reset(seed=1)
    c, _ = env.reset(seed=0)
    assert not np.array_equal(a["state"], b["state"])
    assert np.array_equal(a["state"], c["state"]) and a["instruction"] == c["instruction"]
