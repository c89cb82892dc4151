"""Fast closed-loop acting: :meth:`TrajectoryModel.step` over a preallocated ring-buffer key/value cache.

``TrajectoryModel.step`` keeps its cache as a list of growing tensors: every step concatenates
the new keys and values onto each block's cache, and once ``context`` timesteps are held it
copies the cache without its oldest timestep. Both cost a dozen small allocations a step, on
top of the per-module call overhead, which is most of a step's time for a small model on a CPU.

:class:`RingCache` computes the same thing with the same weights, differently stored:

- keys and values of every block live in one buffer allocated once,
  ``(n_layer, 2, B, n_head, G + 2 * context, head_dim)``: the goal tokens' slots first, then
  ``context`` pairs of slots. Step ``t`` writes its two new tokens (the previous action
  ``a_{t-1}``, then the observation ``o_t``) in place into pair ``t % context``, overwriting
  the oldest timestep's observation and the action before it;
- attention reads the whole buffer under an additive mask that hides empty slots, the one
  dropped action still stored (``a_{t-context}``), and ``o_t`` from ``a_{t-1}``. Tokens carry
  their timestep in their embedding and attention is order-free, so the slot order does not
  matter. The ``2 * context`` masks this needs are built once;
- blocks run as plain functional ops on the modules' own weights (no module calls, no
  dropout: acting is inference; keys and values written with one copy per block), the state
  normalisation (and the ``state_input`` mask) is folded into the state MLP's first layer
  (without pixels), and only the policy head runs.

The cache therefore holds exactly the tokens ``step``'s cache holds, and the two agree up to
float rounding at every step (tests/test_ringcache.py). A cache belongs to one episode of one
model: it reads the weights as they are when the episode starts. ``torch.compile`` of the step
(static shapes) was tried on the 2-core CPU VM and was slower than this eager path (guards and
wrapper overhead outweigh the fused kernels at two tokens a step).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from embodied.model import ACT, OBS, KVCache, TrajectoryModel


class _Weights(NamedTuple):
    """One block's tensors, read once per episode: attribute look-ups on modules cost more than the ops here."""

    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    proj_w: torch.Tensor
    proj_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    fc_w: torch.Tensor
    fc_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    eps: float

    @classmethod
    def of(cls, blk: torch.nn.Module) -> "_Weights":
        a, fc, out = blk.attn, blk.mlp[0], blk.mlp[2]
        return cls(blk.ln1.weight, blk.ln1.bias, a.qkv.weight, a.qkv.bias, a.proj.weight, a.proj.bias,
                   blk.ln2.weight, blk.ln2.bias, fc.weight, fc.bias, out.weight, out.bias, blk.ln1.eps)


class RingCache:
    """A running episode's key/value cache for ``B`` rows that share their timestep.

    ``step(state, t, prev_action, pixels)`` appends ``a_{t-1}`` (when ``prev_action`` is
    given) and ``o_t`` and returns the action logits (B, action_dim, action_bins) at ``o_t``.
    ``t`` counts the episode's steps from 0 and must grow by one per call.
    """

    def __init__(self, model: TrajectoryModel, goal: torch.Tensor) -> None:
        """``goal`` (B, goal_dim): the instruction embeddings; the model should be in eval mode."""
        cfg = model.cfg
        self.model, self.cfg = model, cfg
        self.G, self.C, self.n_head = cfg.n_goal_tokens, cfg.context, cfg.n_head
        B, dev = goal.shape[0], goal.device
        self.goal = goal
        self.blocks = [_Weights.of(blk) for blk in model.blocks]
        with torch.inference_mode():
            self.kv = torch.zeros(cfg.n_layer, 2, B, self.n_head, self.G + 2 * self.C, cfg.d_model // cfg.n_head, device=dev)
            self.masks = _masks(self.G, self.C, dev)
            self.slots = (self.G + torch.arange(2 * self.C, device=dev)).view(self.C, 2)  # pair p: its two slots
            self._write_goal()
            self.state_w, self.state_b = self._folded_state_layer()
            self.state_w2, self.state_b2 = model.state_enc[2].weight, model.state_enc[2].bias
        self.act_w, self.act_b = model.action_enc.weight, model.action_enc.bias
        self.obs_emb, self.act_emb = model.modality.weight[OBS], model.modality.weight[ACT]
        self.time_emb = model.timestep.weight
        self.lnf = (model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
        self.head_w, self.head_b = model.action_head.weight, model.action_head.bias
        self.t = -1

    def restart(self, goal: torch.Tensor) -> None:
        """Start a new episode in the same buffers (their addresses stay, as a captured CUDA graph needs): ``goal``
        (B, goal_dim) is copied into :attr:`goal` (the tensor the cache was built with: give it one it may own, e.g. a
        clone, when it will restart), the goal tokens are recomputed and every timestep is forgotten."""
        with torch.inference_mode():
            self.goal.copy_(goal)
            self.model.forget_queries()  # they were the old goal's
            self.kv.zero_()
            self._write_goal()
            w, b = self._folded_state_layer()  # the weights as they are now (they may have been trained since)
            self.state_w.copy_(w)
            self.state_b.copy_(b)
        self.t = -1

    def _folded_state_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The state MLP's first layer with the normalisation folded in:
        W ((s - mean) / std * mask) + b = (W * mask / std) s + (b - (W * mask / std) mean)."""
        m = self.model
        w = m.state_enc[0].weight * (m.state_input_mask / m.state_std)
        return w, m.state_enc[0].bias - w @ m.state_mean

    def _write_goal(self) -> None:
        """The goal tokens' keys and values into their slots (they attend to each other causally)."""
        g = self.model.goal_tokens(self.goal)
        for i, w in enumerate(self.blocks):
            g = _block(w, g, self.kv[i], torch.arange(self.G, device=g.device), None, self.n_head)

    def step(self, state: torch.Tensor, t: int | torch.Tensor, prev_action: torch.Tensor | None = None,
             pixels: torch.Tensor | None = None, obs: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``a_{t-1}`` (B, action_dim) and ``o_t`` (state (B, state_dim), pixels (B, H, W, 3)); action logits (B, A, bins).
        ``obs`` (B, 1, d): ``o_t``'s token when the caller already has it (:meth:`TrajectoryModel.obs_views`).

        ``t`` may also be a 0-dim long tensor on the cache's device (t >= 1, with ``prev_action``): the form a CUDA
        graph can capture, since nothing then reads a value back to the host. That form neither checks nor counts
        the step: the caller says which step it was with :meth:`stepped`."""
        if isinstance(t, torch.Tensor):
            if prev_action is None:
                raise ValueError("a step at a device timestep needs prev_action (the first step, t=0, takes an int)")
        else:
            if t != self.t + 1:
                raise ValueError(f"RingCache steps one timestep at a time: expected t={self.t + 1}, got {t}")
            if (prev_action is None) != (t == 0):
                raise ValueError("give prev_action at every step but the first (t=0)")
            self.t = t
        if torch.is_inference_mode_enabled():  # the policy's predict already is; entering it again costs more than a block
            return self._step(state, t, prev_action, pixels, obs)
        with torch.inference_mode():
            return self._step(state, t, prev_action, pixels, obs)

    def stepped(self, t: int) -> None:
        """Record that step ``t`` was taken through the device-timestep form of :meth:`step`."""
        if t != self.t + 1:
            raise ValueError(f"RingCache steps one timestep at a time: expected t={self.t + 1}, got {t}")
        self.t = t

    def _step(self, state: torch.Tensor, t: int | torch.Tensor, prev_action: torch.Tensor | None, pixels: torch.Tensor | None,
              obs: torch.Tensor | None = None) -> torch.Tensor:
        last = self.time_emb.shape[0] - 1
        if obs is None and pixels is None and self.model.entity_enc is None:  # the state MLP, normalisation folded in
            obs = F.linear(F.gelu(F.linear(state, self.state_w, self.state_b)), self.state_w2, self.state_b2)
            obs = (obs + self.obs_emb + _row(self.time_emb, _at_most(t, last)))[:, None]
        elif obs is None:
            ts = timestep_column(t, state.shape[0], state.device)
            obs = self.model.obs_tokens(state[:, None], ts, None if pixels is None else pixels[:, None], goal=self.goal)
        if prev_action is not None:
            act = F.linear(prev_action.float(), self.act_w, self.act_b) + self.act_emb + _row(self.time_emb, _at_most(t - 1, last))
            x = torch.cat([act[:, None], obs], dim=1)
        else:
            x = obs
        L, p = x.shape[1], t % self.C
        row = (t if t < self.C else self.C + p) if isinstance(t, int) else torch.where(t < self.C, t, self.C + p)
        mask = _row(self.masks, row)[2 - L:]  # (L, G + 2C): rows a_{t-1}, o_t
        slots = _row(self.slots, p)[2 - L:]
        for i, w in enumerate(self.blocks):
            x = _block(w, x, self.kv[i], slots, mask, self.n_head)
        h = F.layer_norm(x[:, -1], (x.shape[-1],), *self.lnf)
        return F.linear(h, self.head_w, self.head_b).unflatten(-1, (self.cfg.action_dim, self.cfg.action_bins))


    def as_kv_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The tokens in view as a :data:`embodied.model.KVCache` in episode order (goal tokens, then
        ``o_s a_s`` per timestep, ending with ``o_t``): the cache ``TrajectoryModel.step`` would hold, for
        ``TrajectoryModel.imagine`` from this episode (copies; the ring is left as it is)."""
        if self.t < 0:
            raise ValueError("the cache holds no observation yet; step it first")
        order = list(range(self.G))
        for s in range(max(0, self.t - self.C + 1), self.t + 1):
            order.append(self.G + 2 * (s % self.C) + 1)  # o_s
            if s < self.t:
                order.append(self.G + 2 * ((s + 1) % self.C))  # a_s, stored beside o_{s+1}
        idx = torch.tensor(order, device=self.kv.device)
        kv = self.kv.index_select(4, idx)
        return KVCache([(kv[i, 0], kv[i, 1]) for i in range(self.cfg.n_layer)], self.goal)


def timestep_column(t: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Timestep ``t`` as a (batch, 1) long tensor, from a host int or a 0-dim device tensor (expanded: no copy, no read-back)."""
    return torch.full((batch, 1), t, device=device) if isinstance(t, int) else t.expand(batch, 1)


def _row(table: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
    """``table[i]`` for a host int or a 0-dim device tensor (gathered on the device: no value read back)."""
    return table[i] if isinstance(i, int) else table.index_select(0, i.view(1))[0]


def _at_most(t: int | torch.Tensor, last: int) -> int | torch.Tensor:
    """``min(t, last)`` for a host int or a device tensor (no value read back)."""
    return min(t, last) if isinstance(t, int) else t.clamp(max=last)


def _block(w: _Weights, x: torch.Tensor, kv: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor | None, n_head: int) -> torch.Tensor:
    """One pre-norm block (``Block.forward``) on the new tokens x (B, L, d): their keys and values go into ``kv``
    (2, B, H, N, hd) at ``slots`` (L,); with ``mask`` (L, N) they attend over the whole buffer, without it causally
    over themselves."""
    B, L, d = x.shape
    h = F.layer_norm(x, (d,), w.ln1_w, w.ln1_b, w.eps)
    qkv = F.linear(h, w.qkv_w, w.qkv_b).view(B, L, 3, n_head, d // n_head).permute(2, 0, 3, 1, 4)  # (3, B, H, L, hd)
    kv.index_copy_(3, slots, qkv[1:])  # keys and values in one write
    if mask is None:
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
    else:
        y = F.scaled_dot_product_attention(qkv[0], kv[0], kv[1], attn_mask=mask)
    x = x + F.linear(y.transpose(1, 2).reshape(B, L, d), w.proj_w, w.proj_b)
    h = F.layer_norm(x, (d,), w.ln2_w, w.ln2_b, w.eps)
    return x + F.linear(F.gelu(F.linear(h, w.fc_w, w.fc_b)), w.out_w, w.out_b)


@functools.lru_cache(maxsize=8)
def _masks(G: int, C: int, device: torch.device) -> torch.Tensor:
    """(2C, 2, G + 2C) additive masks (0 or -inf); row 0 is the query ``a_{t-1}``, row 1 ``o_t``.

    Entry ``t < C`` is step t while the ring fills; entry ``C + p`` is every step t >= C with
    t % C == p. Pair j holds (a_{s-1}, o_s) of the latest timestep s with s % C == j.
    """
    e = torch.arange(2 * C)[:, None]  # entry
    j = torch.arange(C)[None, :]  # pair
    filling = e < C
    p = torch.where(filling, e, e - C)  # the pair this step writes
    obs_ok = ~filling | (j <= e)  # written already
    dropped = (j == (p + 1) % C) & (C > 1)  # a_{t-C}, still stored beside o_{t-C+1}
    act_ok = torch.where(filling, (j >= 1) & (j <= e), ~dropped)  # a_{-1} does not exist
    ok = torch.ones(2 * C, 2, G + 2 * C, dtype=torch.bool)
    ok[:, :, G::2] = act_ok[:, None]
    ok[:, :, G + 1::2] = obs_ok[:, None]
    ok[torch.arange(2 * C), 0, G + 2 * p[:, 0] + 1] = False  # a_{t-1} comes before o_t
    return torch.zeros(ok.shape).masked_fill(~ok, float("-inf")).to(device)
