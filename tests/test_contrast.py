"""Mismatched-instruction negatives (``--contrast``): which windows are swapped, to what, and what they then teach."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embodied import specs
from embodied.envs.instructions import parse_instruction
from embodied.errors import ConfigError
from embodied.training_data import InstructionContrast

INSTRUCTIONS = [
    "push the red cube to the right",
    "slide the red cube to the right side",  # a paraphrase of the first: never its contrast
    "push the red cube to the left",
    "push the blue ball to the top",
    "move the red cube to the green zone",
    "touch the red cube",
    "touch the blue ball",
    "dance a little jig",  # the parser does not know it: never swapped, never a contrast
]


def _batch(n: int = 400, t: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(n, t, dtype=torch.bool)
    return {
        specs.INSTRUCTION: torch.arange(n) % len(INSTRUCTIONS),
        specs.STATE: torch.randn(n, t, 5, generator=g),
        specs.SUCCESS: torch.zeros(n, t, dtype=torch.bool).index_fill_(1, torch.tensor([t - 1]), True),
        "reward_mask": mask.clone(), "cost_mask": mask.clone(), "success_mask": mask.clone(), "action_mask": mask.clone(),
        f"{specs.EXPERT_ACTION}_mask": mask.clone(), f"{specs.COST_BY_TERM}_mask": mask.clone(), "mask": mask.clone(),
    }


def test_swaps_name_another_task_of_the_family_and_teach_only_not_solved():
    contrast = InstructionContrast(INSTRUCTIONS, 0.5, seed=1)
    batch = _batch()
    out = contrast(batch, 7)
    s = out["contrast"]
    before, after = batch[specs.INSTRUCTION], out[specs.INSTRUCTION]
    swappable = torch.tensor([bool(contrast.far[i]) for i in before.tolist()])
    assert swappable.float().mean() == 6 / 8  # not the unparsed one, nor the zone push alone in its family
    assert 0.4 < s[swappable].float().mean() < 0.6 and not s[~swappable].any()
    assert torch.equal(after[~s], before[~s])
    for i, j in zip(before[s].tolist(), after[s].tolist()):
        a, b = parse_instruction(INSTRUCTIONS[i]), parse_instruction(INSTRUCTIONS[j])
        assert a.family == b.family and a != b, (INSTRUCTIONS[i], INSTRUCTIONS[j])
        # the same object asked another direction where one exists (the near miss); another object only for reach,
        # or where the family holds no other direction or zone for it (the blue ball's only contrasts are red cubes)
        assert (a.colour, a.shape) == (b.colour, b.shape) or a.family == "reach" or not contrast.near[i]
    assert set(after[s & (before == 0)].tolist()) == {2}  # "push the red cube to the right" -> only "... to the left"
    assert not s[before == INSTRUCTIONS.index("dance a little jig")].any()
    # swapped rows: success 0 everywhere, no action, reward or cost targets; the state and the frame masks stay
    assert not out[specs.SUCCESS][s].any() and torch.equal(out[specs.SUCCESS][~s], batch[specs.SUCCESS][~s])
    for key in ("reward_mask", "cost_mask", f"{specs.EXPERT_ACTION}_mask", f"{specs.COST_BY_TERM}_mask"):
        assert not out[key][s].any() and out[key][~s].all()
    assert torch.equal(out["imitate"], ~s)
    for key in ("success_mask", "action_mask", "mask", specs.STATE):
        assert torch.equal(out[key], batch[key])


def test_the_same_batch_number_swaps_the_same_windows():
    a, b = InstructionContrast(INSTRUCTIONS, 0.3, seed=1), InstructionContrast(INSTRUCTIONS, 0.3, seed=1)
    x, y, z = a(_batch(), 5), b(_batch(), 5), b(_batch(), 6)
    assert torch.equal(x[specs.INSTRUCTION], y[specs.INSTRUCTION]) and torch.equal(x["contrast"], y["contrast"])
    assert not torch.equal(x["contrast"], z["contrast"])


def test_paraphrases_are_never_each_others_contrast():
    contrast = InstructionContrast(INSTRUCTIONS, 0.5, seed=0)
    assert 1 not in contrast.far[0] and 0 not in contrast.far[1]
    assert contrast.near[0] == [2]  # the same red cube pushed left; not the zone (another family)
    assert contrast.far[5] == [6] and contrast.near[5] == []  # reach: another object
    assert contrast.far[7] == [] and all(7 not in f for f in contrast.far)


def test_rate_zero_swaps_nothing_and_a_bad_rate_is_refused():
    out = InstructionContrast(INSTRUCTIONS, 0.0, seed=0)(_batch(), 0)
    assert not out["contrast"].any()
    with pytest.raises(ConfigError, match="--contrast"):
        InstructionContrast(INSTRUCTIONS, 1.0, seed=0)


def test_a_swapped_window_adds_only_success_loss():
    """The loss of a fully swapped batch is its success and state terms: nothing of the action, reward or cost."""
    from embodied.config import preset
    from embodied.model import TrajectoryModel

    torch.manual_seed(0)
    model = TrajectoryModel(preset("tiny"))
    n, t = 4, 5
    rng = np.random.default_rng(0)
    mask = torch.ones(n, t, dtype=torch.bool)
    batch = {
        specs.STATE: torch.from_numpy(rng.normal(size=(n, t, specs.STATE_DIM)).astype(np.float32)),
        specs.ACTION: torch.from_numpy(rng.uniform(-1, 1, size=(n, t, specs.ACTION_DIM)).astype(np.float32)),
        specs.REWARD: torch.ones(n, t), specs.COST: torch.ones(n, t), specs.SUCCESS: torch.ones(n, t, dtype=torch.bool),
        "reward_mask": mask.clone(), "cost_mask": mask.clone(), "success_mask": mask.clone(), "action_mask": mask.clone(), "mask": mask,
        "timestep": torch.arange(t).repeat(n, 1), specs.INSTRUCTION: torch.zeros(n, dtype=torch.long),
    }
    out = InstructionContrast(["touch the red cube", "touch the blue ball"], 0.999, seed=0)(batch, 0)
    assert out["contrast"].all()
    goal = torch.randn(2, model.cfg.goal_dim)[out[specs.INSTRUCTION]]
    _, terms = model.loss(out, goal)
    assert terms["action"] == 0 and terms["reward"] == 0 and terms["cost"] == 0
    assert terms["success"] > 0 and terms["state"] > 0
