"""One closed-loop step of the foundation policy, and its CUDA-graph replay (:class:`GraphedStep`).

On a GPU a small model's step is bound by kernel launches, not arithmetic: the ``base``
preset's cached step took 5.3 ms on an H100 (BENCHMARKS.md, "Policy latency"), a few hundred
small kernels each launched from Python. A CUDA graph records one step's kernels once and
replays them with one launch. What a graph reads and writes must stay at the addresses it was
captured with, so a :class:`GraphedStep` (one per env row) keeps everything a step touches in
buffers of its own: the state, the timestep, the previous action and the pixels; the ring
cache (:class:`embodied.ringcache.RingCache`, restarted in place for each episode); and a
present-only policy's goal-token cache. A new episode copies its goal into them. The first
step of an episode (no previous action: another shape) runs eagerly; the graph is captured at
the first step after it and replayed from then on, with the timestep as a device tensor
(:meth:`RingCache.step` takes one), so nothing in the step reads a value back to the host.

How the step is captured is a parameter: :func:`cuda_graph` on a GPU, :func:`eager` elsewhere
(the same step on the same buffers, without a graph). The buffer logic is therefore tested on
any machine (tests/test_policy.py), the graph itself where there is a GPU (tests/test_gpu.py).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from embodied.model import KVCache, TrajectoryModel
from embodied.ringcache import RingCache, timestep_column

Capture = Callable[[Callable[[], torch.Tensor]], Callable[[], torch.Tensor]]
"""Turns a step on fixed buffers into a function that runs it again (a graph's replay) and returns its output."""


def cached_logits(model: TrajectoryModel, ring: RingCache, goal_cache: KVCache | None, state: torch.Tensor,
                  t: int | torch.Tensor, prev_action: torch.Tensor | None, pixels: torch.Tensor | None) -> torch.Tensor:
    """Action logits (B, A, bins) of step ``t`` of an episode, appending ``a_{t-1}`` and ``o_t`` to ``ring``.

    ``state`` (B, S), ``prev_action`` (B, A) (None at t = 0), ``pixels`` (B, H, W, 3) or None. A
    ``policy_history`` model acts from the ring; a present-only one from ``goal_cache`` (:meth:`TrajectoryModel.start`
    of the ring's goal) and this observation, while the ring keeps the episode for imagination; both tokens of
    ``o_t`` come from one pass over the scene. ``t`` is an int, or a 0-dim long tensor on the model's device (t >= 1,
    the graph-capturable form; see :meth:`RingCache.step`)."""
    if model.cfg.policy_history:
        return ring.step(state, t, prev_action, pixels)
    ts = timestep_column(t, state.shape[0], state.device)
    traj, pol = model.obs_views(state[:, None], ts, None if pixels is None else pixels[:, None], goal=ring.goal, policy=True)
    ring.step(state, t, prev_action, pixels, obs=traj)
    assert goal_cache is not None, "a present-only policy acts from its goal cache"
    return model.policy_logits(goal_cache, state, ts[:, 0], pixels, token=pol)


def eager(step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """No graph: each call runs the step's kernels one by one (CPUs, and the reference the graph must match)."""
    return step


def cuda_graph(step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """Capture ``step`` as a CUDA graph; the returned function replays it and returns its output tensor (the same
    tensor every time: read it before the next replay). The step is run twice on a side stream first, as capture
    needs; a step that writes a cache writes the same values each time, so the warm-up changes nothing."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


class GraphedStep:
    """One env row's closed-loop steps on fixed buffers, replayed as one CUDA graph per step from t = 1 on.

    ``begin(goal)`` starts an episode; ``step(state, t, prev_action, pixels)`` returns the action logits
    (1, A, bins), a tensor the next step overwrites. :attr:`ring` and :attr:`goal_cache` are the episode's caches.
    """

    def __init__(self, model: TrajectoryModel, goal: torch.Tensor, capture: Capture | None = None) -> None:
        """``goal`` (1, goal_dim) the first episode's instruction embeddings; ``capture`` defaults to
        :func:`cuda_graph` on a GPU and :func:`eager` elsewhere."""
        self.model = model
        self.capture = capture or (cuda_graph if goal.device.type == "cuda" else eager)
        dev, cfg = goal.device, model.cfg
        with torch.inference_mode():
            self.ring = RingCache(model, goal.clone())  # its goal buffer is ours: restart overwrites it
            self.goal_cache = None if cfg.policy_history else model.start(self.ring.goal)
            self.state = torch.zeros(1, cfg.state_dim, device=dev)
            self.t = torch.zeros((), dtype=torch.long, device=dev)
            self.prev_action = torch.zeros(1, cfg.action_dim, device=dev)
        self.pixels: torch.Tensor | None = None
        self._replay: Callable[[], torch.Tensor] | None = None

    def begin(self, goal: torch.Tensor) -> None:
        """A new episode for instruction embeddings ``goal`` (1, goal_dim), in the same buffers."""
        with torch.inference_mode():
            self.ring.restart(goal)
            if self.goal_cache is not None:
                for (k, v), (k_new, v_new) in zip(self.goal_cache, self.model.start(self.ring.goal)):
                    k.copy_(k_new)
                    v.copy_(v_new)

    def step(self, state: torch.Tensor, t: int, prev_action: torch.Tensor | None, pixels: torch.Tensor | None) -> torch.Tensor:
        """Action logits (1, A, bins) at step ``t`` (counted from 0 in each episode) from ``state`` (1, S),
        ``prev_action`` (1, A) (None at t = 0) and ``pixels`` (1, H, W, 3) or None."""
        if t == 0:
            return cached_logits(self.model, self.ring, self.goal_cache, state, 0, None, pixels)
        if prev_action is None:
            raise ValueError("give prev_action at every step but the first (t=0)")
        self.state.copy_(state)
        self.t.fill_(t)
        self.prev_action.copy_(prev_action)
        if pixels is not None:
            if self.pixels is None:
                self.pixels = torch.empty_like(pixels)
            self.pixels.copy_(pixels)
        if self._replay is None:
            def one_step() -> torch.Tensor:
                return cached_logits(self.model, self.ring, self.goal_cache, self.state, self.t, self.prev_action, self.pixels)

            try:
                self._replay = self.capture(one_step)
            except RuntimeError as e:  # a kernel that cannot be captured: act correctly, only slower
                warnings.warn(f"could not capture the policy's step as a CUDA graph ({e}); acting without graphs", stacklevel=2)
                self._replay = eager(one_step)
        logits = self._replay()
        self.ring.stepped(t)
        return logits
