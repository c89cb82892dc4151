"""Wrappers around the suite's envs."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from embodied.specs import INSTRUCTION, INSTRUCTION_BYTES, STATE, encode_instruction


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


class FixedTask(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Every episode asks for the task of one plain-language instruction.

    Each ``reset`` sets the scene up to contain what ``instruction`` names (the target object,
    the zone colour or the direction; the rest of the layout follows the seed), and the
    observation's ``instruction`` is those exact words. Reinforcement learning on a
    language-specified reward uses it: the instruction is fixed per run.
    """

    def __init__(self, env: gym.Env, instruction: str) -> None:
        from embodied.errors import ConfigError

        from .instructions import InstructionError, parse_instruction

        gym.utils.RecordConstructorArgs.__init__(self, instruction=instruction)
        super().__init__(env)
        try:
            self.task = parse_instruction(instruction)
        except InstructionError as e:
            raise ConfigError(f"cannot use {instruction[:80]!r}: {e}") from None
        family = env.unwrapped.family.name  # type: ignore[attr-defined]
        if self.task.family != family:
            raise ConfigError(f"the instruction asks for a {self.task.family} task, this env runs {family} tasks; pick a {self.task.family} env")
        self.instruction = instruction

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        return self.env.reset(seed=seed, options={**(options or {}), "task": self.task._asdict(), "instruction": self.instruction})


class StateOnly(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The observation's ``state`` vector alone, a float32 Box (for policies that get the goal otherwise, e.g. fixed per run)."""

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        self.observation_space = env.observation_space[STATE]  # type: ignore[index]

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        return observation[STATE]
