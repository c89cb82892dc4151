"""The foundation model as a policy, with stable-baselines3's ``predict`` protocol.

:class:`FoundationPolicy` loads a checkpoint folder (or a run folder: its best checkpoint),
encodes each episode's instruction once, and adds one timestep per step through a
key/value cache (:class:`embodied.ringcache.RingCache`, the fast form of
``TrajectoryModel.step``): the previous action's token, then the new observation's, whose
hidden state gives the action bins. On a GPU each row's step is replayed as one CUDA graph
(:mod:`embodied.policies.graphed`). ``use_cache=False`` recomputes the whole context every
step instead (the reference the cache is measured and tested against).

Observations are the suite's dicts, single (``state`` (S,)) or batched from a VecEnv
(``state`` (N, S)); the instruction may be the string or its uint8 form
(:class:`embodied.envs.InstructionAsBytes`, which SB3's VecEnvs need). ``evaluate_policy``
works unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from embodied import specs
from embodied.model import TrajectoryModel
from embodied.ringcache import RingCache

from .graphed import GraphedStep, cached_logits


class Policy(Protocol):
    """What every policy of the stack offers (the experts, random actions and the model alike)."""

    def reset(self) -> None: ...

    def predict(self, observation: Any, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, Any]: ...


@dataclass
class _Episode:
    """One env's running episode: its goal, cache (or history) and the action not yet fed back."""

    instruction: str
    goal: torch.Tensor
    cache: RingCache | None = None
    goal_cache: Any = None
    """The goal tokens' :class:`~embodied.model.KVCache` (policies without history act from it)."""
    t: int = 0
    last_action: torch.Tensor | None = None
    state: torch.Tensor | None = None
    """(1, S) the latest observed state (its token ends the cache)."""
    states: list[torch.Tensor] = field(default_factory=list)
    actions: list[torch.Tensor] = field(default_factory=list)
    pixels: list[torch.Tensor] = field(default_factory=list)


def load_run(path: str | os.PathLike[str], device: str | None = None) -> tuple[TrajectoryModel, dict[str, Any]]:
    """The model of a checkpoint folder, a run folder (its best checkpoint, else its latest) or an adapted folder
    (see :func:`embodied.adapt.load_model`), in eval mode on ``device`` (default: the GPU if any, else cpu), and the
    checkpoint's config (model, train, data, encoder...)."""
    from embodied.adapt import load_model as load_checkpoint_or_adapted

    model, config = load_checkpoint_or_adapted(path)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(dev).eval(), config


def load_model(path: str | os.PathLike[str], device: str | None = None, encoder: str | None = None
               ) -> tuple[TrajectoryModel, Callable[[Sequence[str]], np.ndarray], str]:
    """:func:`load_run`'s model with the sentence encoder the run used (or ``encoder``, asked for the model's
    ``lang_tokens`` token outputs), and the device."""
    from embodied.language import LanguageEncoder, with_tokens

    model, config = load_run(path, device)
    dev = str(next(model.parameters()).device)
    enc = LanguageEncoder(with_tokens(encoder, model.cfg.lang_tokens) if encoder else config.get("encoder"), device=dev)
    return model, enc.encode, dev


class FoundationPolicy:
    """Act with a :class:`~embodied.model.TrajectoryModel` (SB3 ``predict`` protocol)."""

    def __init__(self, model: TrajectoryModel, encode: Callable[[Sequence[str]], np.ndarray], device: str | torch.device | None = None,
                 use_cache: bool = True, temperature: float = 1.0, graphs: bool | None = None) -> None:
        """``graphs``: run the cached step on fixed buffers, replayed as a CUDA graph per step on a GPU
        (:mod:`embodied.policies.graphed`); default on with CUDA, off elsewhere (True on a CPU runs the same buffers
        without a graph)."""
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.encode = encode
        self.use_cache = use_cache
        self.temperature = temperature
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        self._episodes: list[_Episode | None] = []
        self._graphed: list[GraphedStep | None] = []
        """Per env row, kept across episodes (a graph is captured once per row)."""

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = None, encoder: str | None = None, **kwargs: Any) -> "FoundationPolicy":
        """From a checkpoint folder, a run folder (its best checkpoint, else its latest) or an adapted folder
        (``embodied adapt --out``; an adapter is put on its base, checked by hash); the encoder the run used by default."""
        model, encode, dev = load_model(path, device, encoder)
        return cls(model, encode, device=dev, **kwargs)

    def reset(self) -> None:
        """Forget every running episode (the next ``predict`` starts new ones)."""
        self._episodes = []

    def executed(self, actions: np.ndarray) -> None:
        """The actions that ran, (A,) or (N, A) (a safety filter may have replaced this policy's own);
        the next ``predict`` feeds these back into each episode's context instead."""
        rows = np.asarray(actions, dtype=np.float32).reshape(len(self._episodes) or 1, -1)
        for ep, a in zip(self._episodes, rows):
            if ep is not None:
                ep.last_action = torch.as_tensor(a[None], device=self.device)

    @torch.inference_mode()
    def predict(self, observation: Any, state: Any = None, episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, None]:
        """Actions for single or batched observations; ``deterministic`` takes each dimension's most likely bin."""
        states = np.asarray(observation[specs.STATE], dtype=np.float32)
        batched = states.ndim == 2
        states = states if batched else states[None]
        n = len(states)
        raw_instr = observation[specs.INSTRUCTION]
        if not batched or isinstance(raw_instr, str):
            raw_instr = [raw_instr]
        instructions = [specs.decode_instruction(x) for x in raw_instr]
        pixels = observation.get(specs.PIXELS) if self.model.pixel_enc is not None else None
        if pixels is not None and not batched:
            pixels = np.asarray(pixels)[None]
        if len(self._episodes) != n:
            self._episodes = [None] * n
        if len(self._graphed) != n:
            self._graphed = [None] * n
        starts = np.zeros(n, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool).reshape(n)
        actions = []
        for i in range(n):
            ep = self._episodes[i]
            if ep is None or starts[i] or ep.instruction != instructions[i]:
                goal = torch.as_tensor(np.asarray(self.encode([instructions[i]]), dtype=np.float32), device=self.device)
                ep = self._episodes[i] = _Episode(instructions[i], goal)
            s = ep.state = torch.as_tensor(states[i : i + 1], device=self.device)
            p = None if pixels is None else torch.as_tensor(np.asarray(pixels[i : i + 1]), device=self.device)
            logits = self._step_cached(i, ep, s, p) if self.use_cache else self._step_full(ep, s, p)
            a = self.model.decode_action(logits, sample=not deterministic, temperature=self.temperature)
            ep.last_action = a
            ep.t += 1
            actions.append(a[0].cpu().numpy())
        out = np.stack(actions).astype(np.float32)
        return (out if batched else out[0]), None

    def _step_cached(self, row: int, ep: _Episode, s: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
        """Env row ``row``'s action logits: two tokens appended to the episode's ring cache (:func:`cached_logits`)."""
        m = self.model
        if self.graphs:
            g = self._graphed[row]
            if ep.cache is None:  # a new episode in the row's fixed buffers
                if g is None:
                    g = self._graphed[row] = GraphedStep(m, ep.goal)
                else:
                    g.begin(ep.goal)
                ep.cache, ep.goal_cache = g.ring, g.goal_cache
            assert g is not None
            return g.step(s, ep.t, ep.last_action, p)
        if ep.cache is None:
            ep.cache = RingCache(m, ep.goal)
            ep.goal_cache = None if m.cfg.policy_history else m.start(ep.goal)
        return cached_logits(m, ep.cache, ep.goal_cache, s, ep.t, ep.last_action, p)

    def _step_full(self, ep: _Episode, s: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
        """The same action from a full forward pass over the last ``context`` timesteps (no cache)."""
        if ep.last_action is not None:
            ep.actions.append(ep.last_action)
        ep.states.append(s)
        if p is not None:
            ep.pixels.append(p)
        T = self.model.cfg.context
        states, acts = ep.states[-T:], (ep.actions + [torch.zeros_like(ep.actions[-1] if ep.actions else s[:, :2])])[-T:]
        L = len(states)
        ts = torch.arange(ep.t - L + 1, ep.t + 1, device=self.device)[None]
        mask = torch.ones(1, L, dtype=torch.bool, device=self.device)
        batch = {
            specs.STATE: torch.cat(states)[None], specs.ACTION: torch.cat(acts)[None], "timestep": ts, "mask": mask,
            "action_mask": torch.cat([mask[:, 1:], torch.zeros(1, 1, dtype=torch.bool, device=self.device)], dim=1),
        }
        if p is not None:
            batch[specs.PIXELS] = torch.cat(ep.pixels[-T:])[None]
        h = self.model(batch, ep.goal)["h_pol"][:, -1]
        return self.model.action_logits(h)
