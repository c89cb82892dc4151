"""A MuJoCo lookahead: the cost of candidate action sequences from a copy of an env's state.

:class:`SimLookahead` is the simulator's cost predictor for the safety filters of
:mod:`embodied.policies.safety` (it follows their ``CostPredictor`` protocol by shape alone,
since envs never import policies; the application layer wires the two together). For each
candidate it copies the env's ``MjData`` into one scratch ``MjData`` (positions, velocities,
actuator state, time and the solver's warm start: ``mj_copyData`` copies all of it), then
steps the env's own physics: the embodiment's action -> control mapping and ``frame_skip``
substeps per control step, exactly as :meth:`TabletopEnv.step` does, and sums the env's own
indicator costs (:meth:`TabletopEnv.cost_terms`) over the horizon.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from .tabletop import DIVERGENCE_WARNINGS, TabletopEnv


class SimLookahead:
    """Predicted cost of action sequences, from MuJoCo run ahead on a copy of ``env``'s current state."""

    def __init__(self, env: gym.Env) -> None:
        u = env.unwrapped
        if not isinstance(u, TabletopEnv):
            raise TypeError(f"a MuJoCo lookahead needs a tabletop env, got {type(u).__name__}")
        self.env: TabletopEnv = u
        self.scratch = mujoco.MjData(u.model)
        self.steps = 0
        """Control steps simulated so far (each is ``frame_skip`` physics steps)."""
        self._divergence = np.array(sorted(DIVERGENCE_WARNINGS))

    def reset(self) -> None:
        """Nothing to forget: every prediction starts from the env's current state."""

    def observe(self, observation: Any) -> None:
        """Nothing to read: the lookahead copies the simulator itself."""

    def commit(self, action: np.ndarray) -> None:
        """Nothing to record."""

    def predict(self, candidates: np.ndarray) -> np.ndarray:
        """(N, H, A) action sequences in [-1, 1] -> (N,) summed indicator costs over the H steps.

        A candidate whose lookahead diverges (MuJoCo's bad qacc/qvel/qpos warnings or a
        non-finite state) costs H: the worst any sequence of H steps can cost per term.
        """
        env, m, d = self.env, self.env.model, self.scratch
        seqs = np.clip(np.asarray(candidates, dtype=np.float64), -1.0, 1.0)
        if seqs.ndim != 3 or seqs.shape[2] != env.action_space.shape[0]:
            raise ValueError(f"candidates must be (N, H, {env.action_space.shape[0]}), got {seqs.shape}")
        out = np.zeros(len(seqs))
        for n, seq in enumerate(seqs):
            mujoco.mj_copyData(d, m, env.data)
            warned = d.warning.number[self._divergence].copy()
            for a in seq:
                env.embodiment.set_action(d, a, env.control)
                mujoco.mj_step(m, d, nstep=env.frame_skip)
                self.steps += 1
                if np.any(d.warning.number[self._divergence] != warned) or not np.isfinite(d.qpos).all():
                    out[n] = float(len(seq))
                    break
                out[n] += sum(env.cost_terms(d).values())
        return out
