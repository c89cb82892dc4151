"""The foundation model as a dynamics model: ``imagine(obs, actions, instruction)``.

:class:`DynamicsModel` is a view of a checkpoint (the same weights the policy acts with):
given where an episode stands and N candidate sequences of H actions, it rolls the model's
dynamics head forward open loop (:meth:`embodied.model.TrajectoryModel.imagine`) and returns
the predicted states, rewards, cost probabilities and success probabilities of every
candidate, and for pixel models the predicted image encodings.

Where an imagination starts is a :class:`Context`: the model's key/value cache of the
episode so far plus the current state. It comes from a bare observation (no history), from
an episode's recorded past (:meth:`DynamicsModel.context`), or straight from a running
:class:`~embodied.policies.FoundationPolicy` (:func:`policy_context`, no recomputation), so
a safety filter or planner can check candidates around the policy's proposal at every
control step. The N candidates share the context's cache (expanded, not recomputed): one
call costs H forward passes of two tokens over a batch of N.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from embodied import specs
from embodied.model import KVCache, TrajectoryModel

from .foundation import FoundationPolicy, load_model


@dataclass
class Context:
    """Where an imagination starts: one episode's cache and its current observation."""

    cache: KVCache
    """Goal tokens and past whole timesteps (batch 1), ending with the current observation's token when ``observed``."""
    state: torch.Tensor
    """(1, S) the current raw state."""
    timestep: int | torch.Tensor
    """Episode timestep of the current state (a (B,) tensor for stacked contexts)."""
    observed: bool = False
    """Whether the cache already holds the current observation's token (a policy's cache does)."""
    pixels: torch.Tensor | None = None
    """(1, H, W, 3) uint8 current image (pixel models, when not ``observed``)."""


@dataclass
class Imagined:
    """What N candidate action sequences of H steps would do, as the model imagines it (torch tensors)."""

    state: torch.Tensor
    """(N, H, S) raw states after each action."""
    reward: torch.Tensor
    """(N, H) reward of each step, the env's units."""
    cost: torch.Tensor
    """(N, H) probability that the step costs something (violates a constraint)."""
    success: torch.Tensor
    """(N, H) probability that the task is solved after the step."""
    latent: torch.Tensor | None = None
    """(N, H, d) predicted CNN encodings of the next images (pixel models), else None."""

    def numpy(self) -> dict[str, np.ndarray]:
        """The fields as NumPy arrays (``latent`` only when present)."""
        out = {"state": self.state, "reward": self.reward, "cost": self.cost, "success": self.success, "latent": self.latent}
        return {k: v.detach().float().cpu().numpy() for k, v in out.items() if v is not None}


class DynamicsModel:
    """Imagine with a :class:`~embodied.model.TrajectoryModel`: predicted futures of candidate action sequences."""

    def __init__(self, model: TrajectoryModel, encode: Callable[[Sequence[str]], np.ndarray], device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.encode = encode
        self._goals: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = None, encoder: str | None = None) -> "DynamicsModel":
        """From a checkpoint or run folder (its best checkpoint), with the encoder the run used by default."""
        model, encode, dev = load_model(path, device, encoder)
        return cls(model, encode, device=dev)

    @classmethod
    def of(cls, policy: FoundationPolicy) -> "DynamicsModel":
        """The dynamics view of a loaded policy's model (shared weights and encoder)."""
        return cls(policy.model, policy.encode, policy.device)

    def goal(self, instruction: str) -> torch.Tensor:
        """(1, goal_dim) embedding of an instruction, encoded once."""
        if instruction not in self._goals:
            self._goals[instruction] = torch.as_tensor(np.asarray(self.encode([instruction]), dtype=np.float32), device=self.device)
        return self._goals[instruction]

    @torch.inference_mode()
    def context(self, instruction: str, states: Any, actions: Any = None, pixels: Any = None, start: int = 0) -> Context:
        """The context of an episode so far: ``states`` (T, S) observed, the last one current; ``actions``
        (T - 1, A) taken between them; ``pixels`` (T, H, W, 3) for pixel models; ``start`` the episode
        timestep of ``states[0]``. Only the last ``context`` timesteps are kept."""
        st = torch.as_tensor(np.asarray(states, dtype=np.float32), device=self.device)
        if st.ndim != 2 or st.shape[1] != self.model.cfg.state_dim:
            raise ValueError(f"states must be (T, {self.model.cfg.state_dim}), got {tuple(st.shape)}")
        T = st.shape[0]
        act = torch.zeros(0, self.model.cfg.action_dim, device=self.device) if actions is None or T == 1 else \
            torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device)
        if act.shape != (T - 1, self.model.cfg.action_dim):
            raise ValueError(f"need T - 1 = {T - 1} actions of {self.model.cfg.action_dim} for {T} states, got {tuple(act.shape)}")
        px = None if pixels is None or self.model.pixel_enc is None else torch.as_tensor(np.asarray(pixels), device=self.device)
        keep = min(T - 1, self.model.cfg.context - 1)  # past whole timesteps kept in view
        cache = self.model.start(self.goal(instruction))
        if keep > 0:
            ts = torch.arange(start + T - 1 - keep, start + T - 1, device=self.device)[None]
            cache = self.model.prefill(cache, st[None, T - 1 - keep : T - 1], act[None, T - 1 - keep :], ts,
                                       None if px is None else px[None, T - 1 - keep : T - 1])
        return Context(cache, st[T - 1 :], start + T - 1, False, None if px is None else px[T - 1 :])

    @torch.inference_mode()
    def imagine(self, obs: Context | Mapping[str, Any] | Any, actions: Any, instruction: str | None = None,
                per_context: int | None = None) -> Imagined:
        """Predicted futures of candidate action sequences ``actions`` (N, H, A), or one sequence (H, A) (N = 1).

        ``obs`` is a :class:`Context` (an episode so far, see :meth:`context` and :func:`policy_context`),
        an observation dict of the suite (``state``, ``instruction``, optional ``pixels``; no history),
        or a bare state (S,) with ``instruction`` given. For B contexts stacked by :func:`stack_contexts`,
        ``actions`` holds ``per_context`` candidates of each context in turn (N = B x per_context).
        """
        a = torch.as_tensor(np.asarray(actions, dtype=np.float32) if not isinstance(actions, torch.Tensor) else actions,
                            dtype=torch.float32, device=self.device)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.shape[-1] != self.model.cfg.action_dim or a.shape[1] < 1:
            raise ValueError(f"actions must be (N, H, {self.model.cfg.action_dim}) or (H, {self.model.cfg.action_dim}) with H >= 1, got {tuple(a.shape)}")
        ctx = obs if isinstance(obs, Context) else self._bare_context(obs, instruction)
        cache, state, t, pixels = ctx.cache, ctx.state, torch.as_tensor(ctx.timestep, device=self.device).reshape(-1), ctx.pixels
        if len(state) > 1:  # B stacked contexts: each one's cache, state and timestep repeated for its candidates
            k = per_context or 1
            if k * len(state) != len(a):
                raise ValueError(f"{len(state)} stacked contexts need {len(state)} x per_context candidates, got {len(a)}")
            if k > 1:
                cache = KVCache.of(cache).map(lambda x: x.repeat_interleave(k, 0), rows=True)
                state, t = state.repeat_interleave(k, 0), t.repeat_interleave(k, 0)
                pixels = None if pixels is None else pixels.repeat_interleave(k, 0)
        out = self.model.imagine(cache, state, t, a.clamp(-1, 1), pixels=pixels, observed=ctx.observed)
        return Imagined(out["state"], out["reward"], out["cost"], out["success"], out.get("latent"))

    def _bare_context(self, obs: Mapping[str, Any] | Any, instruction: str | None) -> Context:
        if isinstance(obs, Mapping):
            instruction = instruction or specs.decode_instruction(obs[specs.INSTRUCTION])
            pixels = obs.get(specs.PIXELS)
            state = obs[specs.STATE]
        else:
            pixels, state = None, obs
        if instruction is None:
            raise ValueError("imagine needs the instruction (in the observation dict or as instruction=...)")
        return self.context(instruction, np.asarray(state, dtype=np.float32).reshape(1, -1), None,
                            None if pixels is None else np.asarray(pixels)[None])


def stack_contexts(contexts: Sequence[Context]) -> Context:
    """B contexts of equal cache length (lockstep episodes) as one, for one batched :meth:`DynamicsModel.imagine`."""
    if len(contexts) == 1:
        return contexts[0]
    if len({c.cache[0][0].shape[2] for c in contexts}) != 1 or len({c.observed for c in contexts}) != 1:
        raise ValueError("stacked contexts need caches of one length and the same observed flag")
    cache = KVCache.cat([c.cache for c in contexts])
    pixels = None if contexts[0].pixels is None else torch.cat([c.pixels for c in contexts])  # type: ignore[misc]
    t = torch.tensor([int(c.timestep) for c in contexts], device=contexts[0].state.device)
    return Context(cache, torch.cat([c.state for c in contexts]), t, contexts[0].observed, pixels)


def policy_context(policy: FoundationPolicy, row: int = 0) -> Context:
    """The context of a running :class:`FoundationPolicy` episode (batch row ``row``) right after its
    ``predict``: its own ring cache's keys and values in episode order, ending with the current observation
    (a gather, no forward pass)."""
    eps = policy._episodes
    if not policy.use_cache or row >= len(eps) or eps[row] is None or eps[row].cache is None or eps[row].state is None:
        raise ValueError(f"no running cached episode in row {row}; call predict first (with use_cache=True)")
    ep = eps[row]
    return Context(ep.cache.as_kv_cache(), ep.state, ep.t - 1, observed=True)
