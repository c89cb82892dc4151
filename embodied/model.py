"""The foundation model: one causal transformer over language goals, observations and actions.

A window of T timesteps becomes one sequence of G + 2T tokens::

    [g_1 .. g_G] [o_0 a_0] [o_1 a_1] ... [o_{T-1} a_{T-1}]

``g`` are goal tokens (a projection of a frozen sentence embedding of the instruction),
``o_t`` an observation token (an MLP over the normalised state, plus a small CNN over the
pixels when the model has them) and ``a_t`` an action token (a projection of the action,
or a learned "no action" vector where the episode has none). Every token gets a modality
embedding; observation and action tokens also get the embedding of their episode timestep,
so attention needs no positional encoding and a key/value cache can drop old timesteps.

Heads read the hidden states (the three signatures of ../shared/DESIGN.md):

- at ``o_t``: the action ``a_t`` (per-dimension categorical over ``action_bins`` bins in
  [-1, 1], so multimodal demonstrations do not average out) -> the policy;
- at ``a_t``: the change of the normalised state to ``t + 1`` (and, with pixels, the CNN
  encoding of the next image) -> the dynamics model; the reward, the probability that the
  step costs something and the success probability -> the reward function.

All heads train together; each loss is masked by its feature's mask, so an episode
without actions still trains the observation objectives.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from embodied import specs

from embodied.config import PRESETS, ModelConfig, preset  # noqa: F401  (re-exported: the model's sizes live with the other configs)

# ---------------------------------------------------------------------------- blocks
KVCache = list[tuple[torch.Tensor, torch.Tensor]]
"""Per block: keys and values, each (B, n_head, L, head_dim)."""


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``mask`` (L, P + L) bool says which keys each new token sees when ``past`` holds P cached tokens."""
        B, L, C = x.shape  # batch, new tokens, d_model
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, L, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, L, hd)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        causal = past is None or past[0].shape[2] == 0
        if not causal and mask is None:
            mask = cache_mask(L, k.shape[2] - L, x.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, L, C)
        return self.resid_drop(self.proj(y)), (k, v)


def cache_mask(new: int, cached: int, device: torch.device) -> torch.Tensor:
    """(new, cached + new) bool: each new token sees every cached token and the new ones up to itself."""
    return torch.ones(new, cached + new, dtype=torch.bool, device=device).tril(diagonal=cached)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout)
        )

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        a, kv = self.attn(self.ln1(x), past, mask)
        x = x + a
        return x + self.mlp(self.ln2(x)), kv


class PixelEncoder(nn.Module):
    """A small CNN: (B, H, W, 3) uint8 -> (B, d_model).

    A patchify stem (4x4 patches, stride 4) then two stride-2 3x3 convolutions and a 4x4 pool:
    at 64x64 pixels 16x16x64 -> 8x8x128 -> 4x4x128. The stem keeps the first activations a
    quarter the size of a stride-2 stem's; on the GPU this network runs on every frame of a
    batch (16k images a step at batch 256, window 64), so its memory traffic sets its speed.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 64, 4, stride=4), nn.GELU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(128, 128, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128 * 16, d_model),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 255.0 - 0.5  # (B, 3, H, W) in [-0.5, 0.5], channels-last in memory
        return self.net(x)


# ---------------------------------------------------------------------------- the model
OBS, ACT, GOAL = 0, 1, 2  # modality ids


class TrajectoryModel(nn.Module):
    """The transformer and its heads. ``forward`` takes a batch of windows; ``start``/``observe``/``act`` run closed loop."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.goal_proj = nn.Linear(cfg.lang_dim, cfg.n_goal_tokens * d)
        self.state_enc = nn.Sequential(nn.Linear(cfg.state_dim, d), nn.GELU(), nn.Linear(d, d))
        self.pixel_enc = PixelEncoder(d) if cfg.pixels else None
        self.action_enc = nn.Linear(cfg.action_dim, d)
        self.no_action = nn.Parameter(torch.zeros(d))
        self.no_state = nn.Parameter(torch.zeros(d))
        self.modality = nn.Embedding(3, d)
        self.timestep = nn.Embedding(cfg.max_timestep, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.action_head = nn.Linear(d, cfg.action_dim * cfg.action_bins)
        self.state_head = nn.Linear(d, cfg.state_dim)  # normalised state change to t + 1
        self.outcome_head = nn.Linear(d, 3)  # reward (normalised), cost logit, success logit
        self.latent_head = nn.Linear(d, d) if cfg.pixels else None  # the next image's CNN encoding
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        self.register_buffer("reward_stats", torch.tensor([0.0, 1.0]))  # mean, std
        self.register_buffer("bin_centers", torch.linspace(-1, 1, cfg.action_bins))
        self.register_buffer("state_input_mask", torch.tensor(specs.state_input_mask(cfg.state_input, cfg.state_dim)), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scaled init of the residual projections
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def set_normalizer(self, state_mean: torch.Tensor, state_std: torch.Tensor, reward_mean: float = 0.0, reward_std: float = 1.0) -> None:
        """Set the normalisation statistics (stored with the weights); stds below 1e-3 count as 1."""
        std = torch.as_tensor(state_std, dtype=torch.float32)
        self.state_mean.copy_(torch.as_tensor(state_mean, dtype=torch.float32))
        self.state_std.copy_(torch.where(std < 1e-3, torch.ones_like(std), std))
        self.reward_stats.copy_(torch.tensor([float(reward_mean), max(float(reward_std), 1e-3)]))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ tokens
    def _time(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.timestep(timestep.clamp(0, self.cfg.max_timestep - 1))

    def goal_tokens(self, goal: torch.Tensor) -> torch.Tensor:
        """(B, lang_dim) sentence embeddings -> (B, G, d) goal tokens."""
        g = self.goal_proj(goal.float()).view(goal.shape[0], self.cfg.n_goal_tokens, self.cfg.d_model)
        return g + self.modality.weight[GOAL]

    def obs_tokens(self, state: torch.Tensor, timestep: torch.Tensor, pixels: torch.Tensor | None = None,
                   state_mask: torch.Tensor | None = None, pixels_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, state_dim) states [+ (B, T, H, W, 3) pixels] -> (B, T, d) observation tokens."""
        s = (state.float() - self.state_mean) / self.state_std * self.state_input_mask
        x = self.state_enc(s)
        if state_mask is not None:
            x = torch.where(state_mask[..., None], x, self.no_state)
        if self.pixel_enc is not None and pixels is not None:
            p = self.pixel_latent(pixels)
            x = x + (p if pixels_mask is None else p * pixels_mask[..., None])
        return x + self.modality.weight[OBS] + self._time(timestep)

    def pixel_latent(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 images -> (B, T, d) CNN encodings."""
        B, T = pixels.shape[:2]
        return self.pixel_enc(pixels.reshape(B * T, *pixels.shape[2:])).view(B, T, -1)

    def action_tokens(self, action: torch.Tensor, timestep: torch.Tensor, action_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, action_dim) actions -> (B, T, d) action tokens (``no_action`` where masked)."""
        x = self.action_enc(action.float())
        if action_mask is not None:
            x = torch.where(action_mask[..., None], x, self.no_action)
        return x + self.modality.weight[ACT] + self._time(timestep)

    def _trunk(self, x: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        x = self.drop(x)
        new: KVCache = []
        mask = None if cache is None else cache_mask(x.shape[1], cache[0][0].shape[2], x.device)  # one mask for every block
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if cache is None else cache[i], mask)
            new.append(kv)
        return self.ln_f(x), new

    # ------------------------------------------------------------------ heads
    def action_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states at observation tokens (..., d) -> action logits (..., action_dim, bins)."""
        return self.action_head(h).unflatten(-1, (self.cfg.action_dim, self.cfg.action_bins))

    def outcomes(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hidden states at action tokens -> normalised state change, normalised reward, cost and success logits."""
        o = self.outcome_head(h)
        return {"delta": self.state_head(h), "reward": o[..., 0], "cost_logit": o[..., 1], "success_logit": o[..., 2]}

    def decode_action(self, logits: torch.Tensor, sample: bool = False, temperature: float = 1.0) -> torch.Tensor:
        """Action logits (..., A, bins) -> actions (..., A): the most likely bin, or a sampled one."""
        if sample:
            probs = F.softmax(logits / max(temperature, 1e-6), dim=-1)
            idx = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).view(probs.shape[:-1])
        else:
            idx = logits.argmax(-1)
        return self.bin_centers[idx]

    def action_bin(self, action: torch.Tensor) -> torch.Tensor:
        """Actions in [-1, 1] -> the index of the nearest bin centre."""
        n = self.cfg.action_bins
        return ((action.clamp(-1, 1) + 1) / 2 * (n - 1)).round().long()

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict[str, torch.Tensor], goal: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hidden states of a batch of windows.

        ``batch`` holds ``state`` (B, T, S), ``action`` (B, T, A), ``timestep`` (B, T), the
        masks of the sampler and optionally ``pixels`` (B, T, H, W, 3); ``goal`` is (B, lang_dim).
        ``action_input_mask`` (B, T), when given, says which actions the model sees (default ``action_mask``).
        Returns ``h_obs`` and ``h_act``, each (B, T, d), and ``pixel_latent`` (B, T, d), the
        CNN's encoding of each image, when the model sees pixels.
        """
        B, T = batch[specs.STATE].shape[:2]
        ts = batch["timestep"]
        latent = self.pixel_latent(batch[specs.PIXELS]) if self.pixel_enc is not None and specs.PIXELS in batch else None
        obs = self.obs_tokens(batch[specs.STATE], ts, None, batch.get("state_mask"))
        if latent is not None:
            obs = obs + latent * batch.get("pixels_mask", batch["mask"])[..., None]
        act = self.action_tokens(batch[specs.ACTION], ts, batch.get("action_input_mask", batch.get("action_mask")))
        seq = torch.stack([obs, act], dim=2).view(B, 2 * T, -1)  # o_0 a_0 o_1 a_1 ...
        G = self.cfg.n_goal_tokens
        h, _ = self._trunk(torch.cat([self.goal_tokens(goal), seq], dim=1))
        h = h[:, G:].view(B, T, 2, -1)
        out = {"h_obs": h[:, :, 0], "h_act": h[:, :, 1]}
        if latent is not None:
            out["pixel_latent"] = latent
        return out

    def loss(self, batch: dict[str, torch.Tensor], goal: torch.Tensor, weights: dict[str, float] | None = None,
             out: dict[str, torch.Tensor] | None = None, count: Callable[[torch.Tensor], torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its terms (each a masked mean; a term with nothing to learn is 0).

        ``out`` is this batch's ``forward`` output when the caller already has it (a DDP wrapper's).
        ``count(n)`` turns a mask's count into the denominator of its mean (default ``max(n, 1)``;
        under DDP the count over all ranks divided by their number).
        """
        w = {"action": 1.0, "state": 1.0, "latent": 0.5, "reward": 0.5, "cost": 0.5, "success": 0.5, **(weights or {})}
        out = self(batch, goal) if out is None else out
        frame = batch["mask"]
        terms: dict[str, torch.Tensor] = {}

        def masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            m = m.float()
            n = m.sum()
            return (x * m).sum() / (n.clamp(min=1.0) if count is None else count(n))

        # policy: the action at each observation (only in windows it may imitate: ``imitate`` (B,) bool, default all)
        am = batch.get("action_mask", frame) & frame
        logits = self.action_logits(out["h_obs"]).float()  # (B, T, A, bins)
        target = self.action_bin(batch[specs.ACTION])
        ce = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view(target.shape).mean(-1)
        terms["action"] = masked_mean(ce, am & batch["imitate"][:, None] if "imitate" in batch else am)
        # dynamics: the normalised change of state from t to t + 1 (also without a known action:
        # the action token is then `no_action`, and the model learns what usually happens)
        pred = self.outcomes(out["h_act"])
        s = (batch[specs.STATE].float() - self.state_mean) / self.state_std
        sm = batch.get("state_mask", frame) & frame
        err = (pred["delta"][:, :-1].float() - (s[:, 1:] - s[:, :-1])).pow(2).mean(-1)
        terms["state"] = masked_mean(err, sm[:, 1:] & sm[:, :-1])
        if self.pixel_enc is not None and specs.PIXELS in batch:  # the next image, in the CNN's own (frozen-target) space
            pm = batch.get("pixels_mask", frame) & frame
            target = out["pixel_latent"][:, 1:].detach()
            err = (self.latent_head(out["h_act"][:, :-1]).float() - target.float()).pow(2).mean(-1)
            terms["latent"] = masked_mean(err, pm[:, 1:] & pm[:, :-1])
        # reward function: reward, cost and success of each action
        om = batch.get("reward_mask", am) & am
        r = (batch[specs.REWARD].float() - self.reward_stats[0]) / self.reward_stats[1]
        terms["reward"] = masked_mean((pred["reward"].float() - r).pow(2), om)
        cost_t = (batch[specs.COST].float() > 0).float()
        terms["cost"] = masked_mean(F.binary_cross_entropy_with_logits(pred["cost_logit"].float(), cost_t, reduction="none"), batch.get("cost_mask", am) & am)
        succ_t = batch[specs.SUCCESS].float()
        terms["success"] = masked_mean(F.binary_cross_entropy_with_logits(pred["success_logit"].float(), succ_t, reduction="none"), batch.get("success_mask", am) & am)
        total = sum(w[k] * v for k, v in terms.items())
        return total, terms

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay the matrices of Linear and Conv layers; not biases, norms, embeddings or learned tokens."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 and "timestep" not in name and "modality" not in name else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # ------------------------------------------------------------------ closed loop, one timestep at a time
    def start(self, goal: torch.Tensor) -> KVCache:
        """A cache holding the goal tokens of (B, lang_dim) instruction embeddings."""
        _, cache = self._trunk(self.goal_tokens(goal))
        return cache

    def observe(self, cache: KVCache, state: torch.Tensor, timestep: torch.Tensor, pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """Append observation tokens (state (B, S), timestep (B,)); returns action logits (B, A, bins) and the cache."""
        x = self.obs_tokens(state[:, None], timestep[:, None], None if pixels is None else pixels[:, None])
        h, cache = self._trunk(x, self._fit(cache))
        return self.action_logits(h[:, -1]), cache

    def act(self, cache: KVCache, action: torch.Tensor, timestep: torch.Tensor) -> tuple[dict[str, torch.Tensor], KVCache]:
        """Append action tokens (B, A); returns the predicted outcomes of that action and the cache."""
        x = self.action_tokens(action[:, None], timestep[:, None])
        h, cache = self._trunk(x, cache)
        return {k: v[:, -1] for k, v in self.outcomes(h).items()}, cache

    def step(self, cache: KVCache, state: torch.Tensor, timestep: torch.Tensor, pixels: torch.Tensor | None = None,
             prev_action: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """One closed-loop step in one pass: the previous action's token (if any), then the new observation's.

        The cache holds whole timesteps except the last, whose action is not known yet; at most
        ``context`` timesteps stay. Returns the action logits (B, A, bins) and the cache.
        """
        x = self.obs_tokens(state[:, None], timestep[:, None], None if pixels is None else pixels[:, None])
        if prev_action is not None:
            x = torch.cat([self.action_tokens(prev_action[:, None], (timestep - 1)[:, None]), x], dim=1)
        G, L = self.cfg.n_goal_tokens, cache[0][0].shape[2]
        if (L - G + 1) // 2 >= self.cfg.context:  # full (its last timestep still lacks its action)
            cache = self._drop_oldest(cache)
        h, cache = self._trunk(x, cache)
        return self.action_logits(h[:, -1]), cache

    def _fit(self, cache: KVCache) -> KVCache:
        """Drop the oldest timestep (its two tokens) once the cache holds ``context`` of them; the goal stays."""
        G, L = self.cfg.n_goal_tokens, cache[0][0].shape[2]
        return self._drop_oldest(cache) if (L - G) // 2 >= self.cfg.context else cache

    def _drop_oldest(self, cache: KVCache) -> KVCache:
        """The cache without its oldest timestep (the two tokens after the goal tokens)."""
        G = self.cfg.n_goal_tokens
        return [(torch.cat([k[:, :, :G], k[:, :, G + 2:]], dim=2), torch.cat([v[:, :, :G], v[:, :, G + 2:]], dim=2)) for k, v in cache]

    def next_state(self, state: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The predicted next state (raw units) from a state and the predicted normalised change."""
        return state + delta * self.state_std
