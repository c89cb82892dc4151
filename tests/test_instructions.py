"""Instruction templates, their train / held-out splits and held-out compositions."""

from __future__ import annotations

from embodied import envs
from embodied.envs import instructions as ins


def test_every_family_has_five_templates_two_held_out():
    for fam in ins.FAMILIES:
        train, para = ins.templates(fam, "train"), ins.templates(fam, "paraphrase")
        assert len(train) + len(para) >= 5 and len(para) >= 2
        assert not set(train) & set(para)


def test_every_paraphrase_has_words_no_training_template_uses():
    """Held-out paraphrases stay held out as the training language grows: each has a verb or noun unseen in training."""
    train_words = {w for fam in ins.FAMILIES for t in ins.templates(fam, "train") for w in t.split() if "{" not in w}
    for fam in ins.FAMILIES:
        for t in ins.templates(fam, "paraphrase"):
            assert {w for w in t.split() if "{" not in w} - train_words, t


def test_at_least_six_colours_and_three_shapes():
    assert len(ins.TRAIN_COLOURS) >= 6 and len(set(ins.COLOURS)) >= 6


def test_composition_targets_never_in_training_targets():
    for fam in ins.FAMILIES:
        train = set(ins.target_choices(fam, "train"))
        held = set(ins.target_choices(fam, "composition"))
        assert held and not train & held


def _instructions(env_id, n=60, **kw):
    env = envs.make(env_id, **kw)
    out = []
    for s in range(n):
        obs, _ = env.reset(seed=s)
        out.append((obs["instruction"], env.unwrapped.task))
    env.close()
    return out


def test_train_env_never_uses_paraphrases_or_held_out_targets():
    for env_id in ("embodied/PointReach-v0", "embodied/Arm2PushZone-v0", "embodied/PointPushDir-v0"):
        fam = envs.entry(env_id).kwargs["family"]
        prefixes = {t.split("{")[0] for t in ins.templates(fam, "paraphrase")}
        for text, task in _instructions(env_id):
            assert not any(text.startswith(p) for p in prefixes)
            assert (task["colour"], task["shape"], fam) not in ins.HELDOUT_COMPOSITIONS


def test_paraphrase_split_uses_only_held_out_templates():
    fam = "push_zone"
    prefixes = tuple(t.split("{")[0] for t in ins.templates(fam, "paraphrase"))
    for text, _ in _instructions("embodied/PointPushZone-v0", instruction_split="paraphrase"):
        assert text.startswith(prefixes)


def test_novel_env_targets_are_held_out():
    for text, task in _instructions("embodied/PointReachNovel-v0"):
        assert (task["colour"], task["shape"]) in ins.target_choices("reach", "novel")
