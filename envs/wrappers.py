"""Wrappers around the suite's envs."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from embodied.specs import INSTRUCTION, INSTRUCTION_BYTES, encode_instruction


class InstructionAsBytes(gym.ObservationWrapper):
    """Replace the ``instruction`` string by its UTF-8 bytes, a (INSTRUCTION_BYTES,) uint8 Box.

    stable-baselines3's vectorised envs (and so ``evaluate_policy``) hold observations as
    arrays; a ``Text`` space has no shape. Policies read the string back with
    :func:`embodied.specs.decode_instruction`.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        spaces = dict(env.observation_space.spaces)  # type: ignore[attr-defined]
        spaces[INSTRUCTION] = gym.spaces.Box(0, 255, (INSTRUCTION_BYTES,), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        return {**observation, INSTRUCTION: encode_instruction(observation[INSTRUCTION])}
