"""The foundation model: one causal transformer over language goals, observations and actions.

A window of T timesteps becomes one sequence of G + 2T tokens::

    [g_1 .. g_G] [o_0 a_0] [o_1 a_1] ... [o_{T-1} a_{T-1}]

``g`` are goal tokens (a projection of a frozen, whitened sentence embedding of the
instruction), ``o_t`` an observation token (an MLP over the normalised state; with
``obs_encoder="entities"`` plus attention over the scene's objects, zones and hazards with
queries from the instruction, :class:`EntityEncoder`; plus a small CNN over the pixels when the
model has them) and ``a_t`` an action token (a projection of the action, or a learned "no
action" vector where the episode has none). Every token gets a modality embedding;
observation and action tokens also get the embedding of their episode timestep, so attention
needs no positional encoding and a key/value cache can drop old timesteps.

Heads read the hidden states (the three signatures of ../shared/DESIGN.md):

- the action ``a_t`` (per-dimension categorical over ``action_bins`` bins in [-1, 1], so
  multimodal demonstrations do not average out) -> the policy. With ``policy_history=True``
  it reads ``o_t`` in the sequence above; by default (``False``) it reads a second view of
  ``o_t`` that attends to the goal tokens and itself only, and whose state MLP sees the
  embodiment's pose but not its velocities (:meth:`TrajectoryModel.present`). Demonstrations
  repeat their last action nearly every step, and a policy that can see it copies it instead
  of reading the scene (on 2,000 reach demonstrations: closed-loop success 0.17 with the
  whole context, 0.95-1.0 with the present and the entity attention);
- at ``a_t``: the change of the state to ``t + 1``, per dimension in units of its typical one-step
  change (``delta_scale``; dimensions that never change are predicted not to) (and, with pixels, the CNN
  encoding of the next image) -> the dynamics model; the reward, the probability that the
  step costs something and the success probability -> the reward function.

All heads train together; each loss is masked by its feature's mask, so an episode
without actions still trains the observation objectives.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from embodied import specs

from embodied.config import PRESETS, ModelConfig, preset  # noqa: F401  (re-exported: the model's sizes live with the other configs)

# ---------------------------------------------------------------------------- blocks
class KVCache(list):
    """A closed-loop key/value cache: per block, keys and values, each (B, n_head, L, head_dim).

    ``goal`` (B, goal_dim) holds the instruction embeddings the cache was started from: an
    ``obs_encoder="entities"`` model needs them for every new observation token. A plain list of
    (keys, values) still works as a cache for a ``flat`` model.
    """

    def __init__(self, layers: Iterable[tuple[torch.Tensor, torch.Tensor]] = (), goal: torch.Tensor | None = None) -> None:
        super().__init__(layers)
        self.goal = goal

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], rows: bool = False) -> "KVCache":
        """``fn`` applied to every key and value tensor; with ``rows`` (``fn`` selects, repeats or expands the batch
        dimension, dim 0) to ``goal`` as well."""
        goal = self.goal if not rows or self.goal is None else fn(self.goal)
        return KVCache([(fn(k), fn(v)) for k, v in self], goal)

    @classmethod
    def of(cls, cache: list[tuple[torch.Tensor, torch.Tensor]]) -> "KVCache":
        """``cache`` itself when it is a KVCache, else a plain list of (keys, values) as one without a goal."""
        return cache if isinstance(cache, KVCache) else cls(cache)

    @classmethod
    def cat(cls, caches: list["KVCache"]) -> "KVCache":
        """Caches of equal length stacked along the batch."""
        goals = [getattr(c, "goal", None) for c in caches]
        goal = None if any(g is None for g in goals) else torch.cat(goals)  # type: ignore[arg-type]
        return cls([(torch.cat([c[i][0] for c in caches]), torch.cat([c[i][1] for c in caches])) for i in range(len(caches[0]))], goal)


def is_token(words: torch.Tensor) -> torch.Tensor:
    """(..., lang_dim) token outputs of the sentence encoder -> (...) bool: a word, not padding (a zero row)."""
    return words.abs().sum(-1) > 0


def cache_goal(cache: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
    """The instruction embeddings a cache started from (None for a plain list)."""
    return getattr(cache, "goal", None)


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
        B, H, W, C = pixels.shape
        stem = self.net[0]
        if H % 4 or W % 4:  # patches that do not tile the image: the convolution drops the rest
            x = pixels.permute(0, 3, 1, 2).float() / 255.0 - 0.5  # (B, 3, H, W) in [-0.5, 0.5], channels-last in memory
            return self.net(x)
        # The stem as one matmul over 4x4x3 patches (the same weights as the convolution): a 3-channel convolution
        # is padded to 8 channels by cuDNN, a kernel that took 6% of a base training step on the H100.
        x = pixels.view(B, H // 4, 4, W // 4, 4, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H // 4, W // 4, 16 * C)
        w = stem.weight.permute(0, 2, 3, 1).reshape(stem.out_channels, 16 * C)  # (64, 4 * 4 * 3), (row, col, rgb) order
        x = F.linear(x.float() / 255.0 - 0.5, w, stem.bias)  # (B, H/4, W/4, 64)
        return self.net[1:](x.permute(0, 3, 1, 2))  # (B, 64, H/4, W/4), channels-last in memory


OBJECT_START = slice(12, 14)
"""An object slot's start position (m) among its specs.OBJECT_FEATURES."""


class EntityEncoder(nn.Module):
    """Attention over the scene with queries from the instruction: the features of the things it names.

    Each object, zone and hazard slot of the state becomes one entity embedding: an MLP per kind over the
    slot's normalised features and its position relative to the end effector (in units of the
    end effector's spread), plus a kind embedding. No absolute position enters, so the policy is the same
    anywhere on the table and cannot tell demonstrations apart by where things were; nor does an object's
    start position (how far an object has moved from it echoes the pushes so far, the shortcut the
    velocities offer: with it, push_dir success in the demo fell from 0.30 to 0.00). ``n_entity_queries`` queries, projected from the
    (whitened) instruction embedding, each attend over the entities of every frame; their results,
    concatenated and projected, join the observation token. Picking "the red cube" out of three objects
    is then a dot product between a query and each object's colour and shape, instead of a gate the
    transformer's MLPs would have to learn from one vector that packs every object.

    With ``lang_tokens`` > 0 each query also reads the instruction's words: it scores every token output of the
    encoder, takes their softmax-weighted sum and adds its projection. A query can so learn to read "the word
    before 'zone'", which the pooled sentence embedding blurs: "push the red cube into the green zone" and "push
    the green cube into the red zone" are at cosine 0.986 pooled. (A probe on the whitened embeddings of
    held-out paraphrases: the zone's colour is read correctly 73% of the time from the pooled vector, 100% with
    one such word pick.)

    With ``moved_readout``, each query also reads the displacement from the start position of what it attends to
    (objects; zones and hazards do not move), with the same attention weights: (Q, 2) numbers, projected, that the
    trajectory's observation token adds and the policy's does not. The start positions stay out of the entity
    embeddings (the policy's shortcut above); the success and reward heads need them, since the displacement of the
    named object is what decides push_dir, and without it a learned reward believed a fingertip resting against an
    unmoved cube late in an episode had solved the task (PPO on that reward found it).

    With ``relation_readout`` (on top of ``moved_readout``), the same token also reads a few relations the success of
    a task is decided by, computed exactly instead of left to the MLPs: each query's displacement along and across a
    direction the instruction gives it (a learned 2-vector per query from all its queries: "to the right"), the
    distance between every two queries' attended entities (the cube and the green zone), and each one's distance
    from the end effector. Without them the success head barely read the asked direction or zone: an expert push
    into the wrong zone scored p 0.9 (``embodied bench reward``, wrong instruction).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, sl = cfg.d_model, specs.state_slices()
        self.n_query, self.ee = cfg.n_entity_queries, sl["ee_pos"]
        self.kinds = ((sl["objects"], specs.N_OBJECTS, specs.OBJECT_FEATURES), (sl["zones"], specs.N_ZONES, specs.ZONE_FEATURES),
                      (sl["hazards"], specs.N_HAZARDS, specs.HAZARD_FEATURES))
        self.enc = nn.ModuleList(nn.Linear(f + 2, d) for _, _, f in self.kinds)  # then GELU and one shared layer
        for i, (_, _, f) in enumerate(self.kinds):  # where each entity is enters only relative to the end effector
            keep = torch.ones(f)
            keep[:2] = 0.0  # the absolute position
            if f == specs.OBJECT_FEATURES:
                keep[OBJECT_START] = 0.0  # an object's start position
            self.register_buffer(f"keep{i}", keep, persistent=False)
        self.shared = nn.Linear(d, d)
        self.kind = nn.Embedding(len(self.kinds), d)
        self.query = nn.Linear(cfg.lang_dim, d)  # n_query heads of d / n_query each
        if cfg.lang_tokens:
            self.word_score = nn.Linear(cfg.lang_dim, self.n_query)  # each query's pick among the instruction's tokens
            self.word_query = nn.Parameter(torch.randn(self.n_query, cfg.lang_dim, d // self.n_query) / math.sqrt(cfg.lang_dim))
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.moved = nn.Linear(2 * self.n_query, d) if cfg.moved_readout else None
        Q = self.n_query
        self.direction = nn.Linear(d, 2 * Q) if cfg.relation_readout else None  # (B, Q x dh) queries -> a 2-vector each
        self.relations = nn.Linear(3 * Q + Q * (Q - 1) // 2, d) if cfg.relation_readout else None

    def queries(self, sentence: torch.Tensor, words: torch.Tensor | None) -> torch.Tensor:
        """The whitened instruction (:meth:`TrajectoryModel.goal_parts`: (B, lang_dim) sentence, (B, L, lang_dim) words
        or None) -> (B, Q, d / Q) queries."""
        B, Q = sentence.shape[0], self.n_query
        q = self.query(sentence).view(B, Q, -1)  # (B, Q, dh)
        if words is not None:  # padding tokens are zero rows, which whitening leaves exactly zero
            pick = self.word_score(words).masked_fill(~is_token(words)[..., None], -1e4).softmax(1)  # (B, L, Q), none on padding
            picked = torch.einsum("blq,blc->bqc", pick, words)  # (B, Q, lang_dim)
            q = q + torch.einsum("bqc,qce->bqe", picked, self.word_query).to(q.dtype)
        return q

    def forward(self, s: torch.Tensor, raw: torch.Tensor, q: torch.Tensor, pos_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``s`` (B, T, S) normalised (masked) states, ``raw`` (B, T, S) the same in raw units, ``q`` (B, Q, dh) the
        instruction's :meth:`queries`, ``pos_scale`` () metres per unit of relative position -> the scene (B, T, d),
        and with ``moved_readout`` the attended displacement's projection (B, T, d), else None."""
        B, T, _ = s.shape
        ee = raw[..., self.ee][..., None, :]  # (B, T, 1, 2)
        ents, rels = [], []
        for k, ((sl, n, f), enc) in enumerate(zip(self.kinds, self.enc)):
            rel = (raw[..., sl].unflatten(-1, (n, f))[..., :2] - ee) / pos_scale  # (B, T, n, 2)
            own = s[..., sl].unflatten(-1, (n, f)) * getattr(self, f"keep{k}")
            ents.append(enc(torch.cat([own, rel], dim=-1)) + self.kind.weight[k])
            rels.append(rel)
        e = self.shared(F.gelu(torch.cat(ents, dim=2)))  # (B, T, E, d)
        Q, E = self.n_query, e.shape[2]
        # one attention call: every frame is a batch row, the queries are its heads, its entities the keys
        k = self.key(e).view(B * T, E, Q, -1).transpose(1, 2)  # (B * T, Q, E, dh)
        v = self.value(e).view(B * T, E, Q, -1).transpose(1, 2)
        u = None if self.direction is None else self.direction(q.reshape(B, -1)).view(B, 1, Q, 2)  # (B, 1, Q, 2): the asked directions
        q = q.to(e.dtype)[:, None].expand(B, T, Q, k.shape[-1]).reshape(B * T, Q, 1, -1)  # (B * T, Q, 1, dh)
        if self.moved is None:
            y = F.scaled_dot_product_attention(q, k, v)  # (B * T, Q, 1, dh)
            return self.out(y.view(B, T, -1)), None  # (B, T, Q * dh) -> (B, T, d)
        # with the readout the weights are needed twice, so the attention is written out (E keys: a small product)
        w = (q @ k.transpose(-1, -2)).float().div(math.sqrt(k.shape[-1])).softmax(-1).to(v.dtype)  # (B * T, Q, 1, E)
        scene = self.out((w @ v).view(B, T, -1))  # (B * T, Q, 1, dh) -> (B, T, d)
        sl, n, f = self.kinds[0]  # the objects come first among the entities
        objs = raw[..., sl].unflatten(-1, (n, f))
        disp = (objs[..., :2] - objs[..., OBJECT_START]) / pos_scale  # (B, T, n, 2)
        disp = F.pad(disp, (0, 0, 0, E - n)).to(v.dtype)  # (B, T, E, 2): zones and hazards do not move
        moved = (w @ disp.view(B * T, 1, E, 2)).view(B, T, Q * 2)  # (B, T, Q x 2): each query's object's displacement
        if self.relations is None:
            return scene, self.moved(moved)
        assert u is not None
        where = (w @ torch.cat(rels, dim=2).to(v.dtype).view(B * T, 1, E, 2)).view(B, T, Q, 2)  # attended entity - end effector
        return scene, self.moved(moved) + self.relations(relation_features(moved.view(B, T, Q, 2), where, u.to(v.dtype)))


def relation_features(moved: torch.Tensor, where: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The relation readout's numbers: ``moved`` (B, T, Q, 2) each query's displacement, ``where`` (B, T, Q, 2) its
    entity's position relative to the end effector, ``u`` (B, 1, Q, 2) its asked direction -> (B, T, 3Q + Q(Q-1)/2):
    displacement along ``u`` and across it (the 2-d cross product), then the distance between every two queries'
    entities (pairs in ``triu_indices`` order), then each entity's distance from the end effector."""
    Q = moved.shape[2]
    along, across = (moved * u).sum(-1), moved[..., 0] * u[..., 1] - moved[..., 1] * u[..., 0]  # (B, T, Q) each
    i, j = torch.triu_indices(Q, Q, offset=1, device=moved.device)
    apart = (where[:, :, i] - where[:, :, j]).norm(dim=-1)  # (B, T, Q (Q - 1) / 2): between the named things
    return torch.cat([along, across, apart, where.norm(dim=-1)], dim=-1)


def policy_targets(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the policy head learns from a batch: (B, T, A) target actions and the (B, T) bool frames that teach it.

    The episode's own action at each observation (only in episodes it may imitate: ``imitate`` (B,) bool, default
    all), or where the store has it the expert's label (``expert_action``, whoever acted: a noisy expert's episode
    teaches how to recover from its drift). Training's loss and the held-out action metrics both read this.
    """
    frame = batch["mask"]
    am = batch.get("action_mask", frame) & frame
    imitate = am & batch["imitate"][:, None] if "imitate" in batch else am
    action = batch[specs.ACTION]
    if specs.EXPERT_ACTION in batch:
        labelled = batch[f"{specs.EXPERT_ACTION}_mask"] & frame  # (B, T)
        action = torch.where(labelled[..., None], batch[specs.EXPERT_ACTION], action)
        imitate = imitate | labelled
    return action, imitate


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
        self.entity_enc = EntityEncoder(cfg) if cfg.obs_encoder == "entities" else None
        self._query_memo: tuple[torch.Tensor, torch.Tensor] | None = None  # (goal, its entity queries), see entity_queries
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
        self.state_head = nn.Linear(d, cfg.state_dim)  # state change to t + 1, in units of delta_scale
        self.outcome_head = nn.Linear(d, 3)  # reward (normalised), cost logit, success logit
        self.term_head = nn.Linear(d, cfg.cost_terms) if cfg.cost_terms else None  # a cost logit per named term
        self.change_head = nn.Linear(d, 1) if cfg.reward_change else None  # the dense reward's change, units of change_scale
        self.latent_head = nn.Linear(d, d) if cfg.pixels else None  # the next image's CNN encoding
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        self.register_buffer("delta_scale", torch.ones(cfg.state_dim))  # raw units of one unit of the state-change head
        self.register_buffer("reward_stats", torch.tensor([0.0, 1.0]))  # mean, std
        if cfg.reward_change:
            self.register_buffer("change_scale", torch.ones(()))  # env reward units of one unit of the change head
        self.register_buffer("goal_mean", torch.zeros(cfg.lang_dim))  # instruction embeddings are whitened:
        self.register_buffer("goal_scale", torch.ones(()))  # (goal - goal_mean) * goal_scale
        if cfg.lang_tokens:  # and so are the token outputs (one mean over every token of every training instruction)
            self.register_buffer("word_mean", torch.zeros(cfg.lang_dim))
            self.register_buffer("word_scale", torch.ones(()))
        self.register_buffer("bin_centers", torch.linspace(-1, 1, cfg.action_bins))
        self.register_load_state_dict_pre_hook(self._upgrade_state_dict)
        self.register_buffer("state_input_mask", torch.tensor(specs.state_input_mask(cfg.state_input, cfg.state_dim)), persistent=False)
        self.register_buffer("policy_state_mask", torch.tensor(specs.state_input_mask("policy", cfg.state_dim)), persistent=False)
        self.apply(self._init_weights)
        if self.entity_enc is not None:  # fan-in init: at N(0, 0.02) a few small layers in a row pass almost nothing on
            for m in self.entity_enc.modules():
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
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

    @staticmethod
    def _upgrade_state_dict(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Checkpoints written before ``delta_scale`` existed measured state changes in units of ``state_std``."""
        module._query_memo = None  # type: ignore[assignment]  # new weights, new queries
        if prefix + "delta_scale" not in state_dict and prefix + "state_std" in state_dict:
            state_dict[prefix + "delta_scale"] = state_dict[prefix + "state_std"].clone()
        if prefix + "goal_mean" not in state_dict and prefix + "state_std" in state_dict:  # nor goal whitening
            state_dict[prefix + "goal_mean"] = torch.zeros_like(module.goal_mean)  # type: ignore[arg-type]
            state_dict[prefix + "goal_scale"] = torch.ones_like(module.goal_scale)  # type: ignore[arg-type]

    def set_normalizer(self, state_mean: torch.Tensor, state_std: torch.Tensor, reward_mean: float = 0.0, reward_std: float = 1.0,
                       delta_std: torch.Tensor | None = None, goals: torch.Tensor | None = None, change_std: float | None = None) -> None:
        """Set the normalisation statistics (stored with the weights); state stds below 1e-3 count as 1.

        ``delta_std`` (S,) is the spread of one step's state change per dimension, in raw units: the
        dynamics head predicts changes in these units, and a dimension whose change is 0 in the data
        (below 1e-6: colours, zones, padded joints) is predicted never to change and left out of the
        loss. Without it, changes are measured in units of the state's spread (``state_std``).

        ``goals`` (N, goal_dim), the embeddings of the training instructions, set the whitening of every
        instruction: minus their mean, over their root-mean-square spread. Sentence embeddings of "touch the
        red cube" and "touch the blue ball" share most of their direction; whitened, what tells them apart
        is what is left. Token outputs get one mean and spread over all (non-padding) tokens.

        ``change_std``: the spread of one step's change of the dense reward (env units), the unit of the reward-change
        head (``cfg.reward_change``; ignored without it).
        """
        std = torch.as_tensor(state_std, dtype=torch.float32)
        self.state_mean.copy_(torch.as_tensor(state_mean, dtype=torch.float32))
        self.state_std.copy_(torch.where(std < 1e-3, torch.ones_like(std), std))
        self.reward_stats.copy_(torch.tensor([float(reward_mean), max(float(reward_std), 1e-3)]))
        if self.change_head is not None and change_std is not None:
            self.change_scale.fill_(max(float(change_std), 1e-6))
        if delta_std is None:
            self.delta_scale.copy_(self.state_std)
        else:
            d = torch.as_tensor(delta_std, dtype=torch.float32)
            self.delta_scale.copy_(torch.where(d < 1e-6, torch.zeros_like(d), d))
        if goals is not None and len(goals) > 1:
            g = torch.as_tensor(goals, dtype=torch.float32)
            for x, mean, scale in ((g[:, : self.cfg.lang_dim], self.goal_mean, self.goal_scale),
                                   (self._words(g), getattr(self, "word_mean", None), getattr(self, "word_scale", None))):
                if mean is not None and scale is not None and len(x) > 1:
                    mean.copy_(x.mean(0))
                    scale.fill_(1.0 / max(float((x - x.mean(0)).pow(2).sum(-1).mean().sqrt()), 1e-3))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ tokens
    def _time(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.timestep(timestep.clamp(0, self.cfg.max_timestep - 1))

    def goal_tokens(self, goal: torch.Tensor) -> torch.Tensor:
        """(B, goal_dim) instruction embeddings -> (B, G, d) goal tokens (from the sentence embedding)."""
        g = self.goal_proj(self.whiten(goal)).view(goal.shape[0], self.cfg.n_goal_tokens, self.cfg.d_model)
        return g + self.modality.weight[GOAL]

    def whiten(self, goal: torch.Tensor) -> torch.Tensor:
        """(B, goal_dim) instruction embeddings -> (B, lang_dim) whitened sentence embeddings (see :meth:`set_normalizer`)."""
        return (goal[..., : self.cfg.lang_dim].float() - self.goal_mean) * self.goal_scale

    def _words(self, goal: torch.Tensor) -> torch.Tensor:
        """The non-padding token outputs of (N, goal_dim) instruction embeddings, (M, lang_dim) raw."""
        w = goal[:, self.cfg.lang_dim :].reshape(-1, self.cfg.lang_dim)
        return w[is_token(w)]

    def entity_queries(self, goal: torch.Tensor) -> torch.Tensor:
        """(B, goal_dim) instruction embeddings -> (B, Q, d / Q) entity queries. In eval mode without gradients the
        last goal's are remembered: closed loop asks for the same goal tensor at every step (after changing a goal in
        place, call :meth:`forget_queries`); any other call, and loading weights, forgets them. Nothing is remembered
        while a CUDA graph is being captured (the graph computes the queries from its own goal buffer)."""
        reuse = not self.training and not torch.is_grad_enabled() and not (goal.is_cuda and torch.cuda.is_current_stream_capturing())
        memo = self._query_memo
        if reuse and memo is not None and memo[0] is goal:
            return memo[1]
        q = self.entity_enc.queries(*self.goal_parts(goal))
        self._query_memo = (goal, q) if reuse else None
        return q

    def forget_queries(self) -> None:
        """Forget the remembered entity queries (:meth:`entity_queries`), e.g. after a goal tensor changed in place."""
        self._query_memo = None

    def goal_parts(self, goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, goal_dim) instruction embeddings -> whitened (B, lang_dim) sentence and (B, L, lang_dim) token outputs
        (None without ``lang_tokens``; padding tokens stay zero rows)."""
        if goal.shape[-1] != self.cfg.goal_dim:
            raise ValueError(f"instruction embeddings of width {goal.shape[-1]}, the model takes {self.cfg.goal_dim} "
                             f"({self.cfg.lang_tokens} tokens of {self.cfg.lang_dim}); use the encoder the model was trained with")
        if not self.cfg.lang_tokens:
            return self.whiten(goal), None
        w = goal[..., self.cfg.lang_dim :].float().unflatten(-1, (self.cfg.lang_tokens, self.cfg.lang_dim))
        return self.whiten(goal), ((w - self.word_mean) * self.word_scale).masked_fill(~is_token(w)[..., None], 0.0)

    def obs_tokens(self, state: torch.Tensor, timestep: torch.Tensor, pixels: torch.Tensor | None = None,
                   state_mask: torch.Tensor | None = None, pixels_mask: torch.Tensor | None = None,
                   goal: torch.Tensor | None = None, policy: bool = False) -> torch.Tensor:
        """(B, T, state_dim) states [+ (B, T, H, W, 3) pixels] -> (B, T, d) observation tokens.

        ``goal`` (B, goal_dim), the instruction embeddings, is needed by an ``obs_encoder="entities"`` model.
        ``policy`` gives the tokens a ``policy_history=False`` policy acts on (see :meth:`obs_views`)."""
        return self.obs_views(state, timestep, pixels, state_mask, pixels_mask, goal, policy=policy)[int(policy)]

    def obs_views(self, state: torch.Tensor, timestep: torch.Tensor, pixels: torch.Tensor | None = None,
                  state_mask: torch.Tensor | None = None, pixels_mask: torch.Tensor | None = None,
                  goal: torch.Tensor | None = None, policy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The trajectory's observation tokens and (with ``policy``, else the same tensor) the present-only policy's,
        (B, T, d) each; they share the entity attention and the CNN.

        With entities, the policy's state MLP sees only the embodiment's posture and the scene comes through the
        instruction's attention alone. (An MLP over every object's colour, shape and position at once memorises
        the demonstrations' scenes instead of learning to find the named object: held-out action error 0.05
        against 0.0001 on 2,000 reach demos.)"""
        s = (state.float() - self.state_mean) / self.state_std * self.state_input_mask
        scene = torch.zeros((), device=s.device)  # the entity attention's share of the state's part
        moved = None  # and the displacement readout's, the trajectory's token only
        if self.entity_enc is not None:
            if goal is None:
                raise ValueError('a model with obs_encoder="entities" needs the goal for its observation tokens '
                                 "(start closed-loop caches with TrajectoryModel.start)")
            scene, moved = self.entity_enc(s, state.float(), self.entity_queries(goal), self.state_std[self.entity_enc.ee].mean())
        extra = self.modality.weight[OBS] + self._time(timestep)
        if self.pixel_enc is not None and pixels is not None:
            p = self.pixel_latent(pixels)
            extra = extra + (p if pixels_mask is None else p * pixels_mask[..., None])

        def view(x: torch.Tensor) -> torch.Tensor:
            x = x + scene
            if state_mask is not None:
                x = torch.where(state_mask[..., None], x, self.no_state)
            return x + extra

        obs = view(self.state_enc(s))
        if moved is not None:
            obs = obs + moved if state_mask is None else torch.where(state_mask[..., None], obs + moved, obs)
        if not policy:
            return obs, obs
        return obs, view(self.state_enc(s * self.policy_state_mask)) if self.entity_enc is not None else obs

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

    def _trunk(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """Blocks over new tokens ``x`` (B, L, d) after ``cache`` (P tokens per row); ``mask`` (L, P + L) bool says which
        keys each new token sees (default :func:`cache_mask`: every cached token, the new ones causally)."""
        x = self.drop(x)
        new = KVCache(goal=None if cache is None else cache_goal(cache))
        if cache is not None and mask is None:
            mask = cache_mask(x.shape[1], cache[0][0].shape[2], x.device)  # one mask for every block
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if cache is None else cache[i], mask)
            new.append(kv)
        return self.ln_f(x), new

    # ------------------------------------------------------------------ heads
    def action_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states at observation tokens (..., d) -> action logits (..., action_dim, bins)."""
        return self.action_head(h).unflatten(-1, (self.cfg.action_dim, self.cfg.action_bins))

    def outcomes(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hidden states at action tokens -> state change (units of ``delta_scale``), normalised reward, cost and success
        logits, and with ``cost_terms`` each term's cost logit (``term_logits``, (..., cost_terms))."""
        o = self.outcome_head(h)
        out = {"delta": self.state_head(h), "reward": o[..., 0], "cost_logit": o[..., 1], "success_logit": o[..., 2]}
        if self.term_head is not None:
            out["term_logits"] = self.term_head(h)
        if self.change_head is not None:
            out["reward_change"] = self.change_head(h)[..., 0]
        return out

    def action_outcomes(self, out: dict[str, torch.Tensor], seen: torch.Tensor
                        ) -> tuple[dict[str, torch.Tensor], Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
        """The reward, cost and success heads' reading of each action of a batch of windows (``forward``'s ``out``).

        ``seen`` (B, T) marks the real observations. Returns the :meth:`outcomes` (B, T', ...), ``at``, which cuts a
        per-action tensor (B, T, ...) to those T' actions, and ``keep`` (B, T'), where they have a reading. Foresight
        (default): every action, at its own token. Hindsight (``cfg.reward_hindsight``): actions 0 .. T - 2, each at the
        token of the observation it led to, kept where that observation is real.
        """
        if not self.cfg.reward_hindsight:
            return self.outcomes(out["h_act"]), (lambda x: x), torch.ones_like(seen, dtype=torch.bool)
        return self.outcomes(out["h_obs"][:, 1:]), (lambda x: x[:, :-1]), seen[:, 1:].bool()

    def dense_reward(self, o: dict[str, torch.Tensor], prev: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`outcomes` -> the dense reward in the env's units (...,): the reward head's level (denormalised; without
        the success bonus when ``cfg.success_bonus``). With a reward-change head (``cfg.reward_change`` = w) and ``prev``
        (...,), the previous step's dense reward as this method gave it, the level is fused with the predicted change:
        ``w (prev + change) + (1 - w) level``; where ``prev`` is NaN (a trajectory's first step) the level stands."""
        level = o["reward"].float() * self.reward_stats[1] + self.reward_stats[0]
        if prev is None or self.change_head is None:
            return level
        w = self.cfg.reward_change
        fused = w * (prev.float() + o["reward_change"].float() * self.change_scale) + (1.0 - w) * level
        return torch.where(torch.isnan(prev), level, fused)

    def expected_reward(self, o: dict[str, torch.Tensor], prev_dense: torch.Tensor | None = None, *,
                        dense: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`outcomes` -> the reward in the env's units (...,): :meth:`dense_reward` (given ``prev_dense``, fused
        with the predicted change; or ``dense`` when the caller has it already) plus, when the head learned the reward
        without the success bonus (``cfg.success_bonus``), that bonus times the success probability."""
        r = self.dense_reward(o, prev_dense) if dense is None else dense
        if self.cfg.success_bonus:
            r = r + self.cfg.success_bonus * torch.sigmoid(o["success_logit"].float())
        return r

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
        masks of the sampler and optionally ``pixels`` (B, T, H, W, 3); ``goal`` is (B, goal_dim).
        ``action_input_mask`` (B, T), when given, says which actions the model sees (default ``action_mask``).
        Returns ``h_obs`` and ``h_act``, each (B, T, d); ``h_pol`` (B, T, d), what the policy head reads
        (``h_obs``, or with ``policy_history=False`` each observation seen with the goal alone, see
        :meth:`present`); and ``pixel_latent`` (B, T, d), the CNN's encoding of each image, when the model
        sees pixels.
        """
        B, T = batch[specs.STATE].shape[:2]
        ts = batch["timestep"]
        latent = self.pixel_latent(batch[specs.PIXELS]) if self.pixel_enc is not None and specs.PIXELS in batch else None
        obs, pol = self.obs_views(batch[specs.STATE], ts, None, batch.get("state_mask"), goal=goal, policy=not self.cfg.policy_history)
        if latent is not None:
            obs = obs + latent * batch.get("pixels_mask", batch["mask"])[..., None]
            pol = pol + latent * batch.get("pixels_mask", batch["mask"])[..., None]
        act = self.action_tokens(batch[specs.ACTION], ts, batch.get("action_input_mask", batch.get("action_mask")))
        seq = torch.stack([obs, act], dim=2).view(B, 2 * T, -1)  # o_0 a_0 o_1 a_1 ...
        G = self.cfg.n_goal_tokens
        h, _ = self._trunk(torch.cat([self.goal_tokens(goal), seq], dim=1))
        h = h[:, G:].view(B, T, 2, -1)
        out = {"h_obs": h[:, :, 0], "h_act": h[:, :, 1]}
        out["h_pol"] = out["h_obs"] if self.cfg.policy_history else self.present(self.start(goal), pol)
        if latent is not None:
            out["pixel_latent"] = latent
        return out

    def present(self, goal_cache: KVCache, obs: torch.Tensor) -> torch.Tensor:
        """Hidden states of observation tokens (B, T, d) that each see the goal tokens and themselves, nothing
        of the past: what a ``policy_history=False`` policy acts on. ``goal_cache`` is :meth:`start`'s (B rows)."""
        T, G = obs.shape[1], goal_cache[0][0].shape[2]
        eye = torch.eye(T, dtype=torch.bool, device=obs.device)
        mask = torch.cat([eye.new_ones(T, G), eye], dim=1)  # (T, G + T): the goal tokens and itself
        h, _ = self._trunk(obs, goal_cache, mask)
        return h

    def policy_logits(self, goal_cache: KVCache, state: torch.Tensor, timestep: torch.Tensor,
                      pixels: torch.Tensor | None = None, token: torch.Tensor | None = None) -> torch.Tensor:
        """Action logits (B, A, bins) of a ``policy_history=False`` model for state (B, S) [and pixels (B, H, W, 3)]
        at ``timestep`` (B,), from the goal alone (:meth:`start`'s cache, unchanged). ``token`` (B, 1, d): the policy's
        observation token when the caller already has it (:meth:`obs_views`)."""
        if token is None:
            token = self.obs_tokens(state[:, None], timestep[:, None], None if pixels is None else pixels[:, None],
                                    goal=cache_goal(goal_cache), policy=True)
        return self.action_logits(self.present(goal_cache, token)[:, 0])

    def loss(self, batch: dict[str, torch.Tensor], goal: torch.Tensor, weights: dict[str, float] | None = None,
             out: dict[str, torch.Tensor] | None = None, count: Callable[[torch.Tensor], torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its terms (each a masked mean; a term with nothing to learn is 0).

        ``out`` is this batch's ``forward`` output when the caller already has it (a DDP wrapper's).
        ``count(n)`` turns a mask's count into the denominator of its mean (default ``max(n, 1)``;
        under DDP the count over all ranks divided by their number).
        """
        w = {"action": 1.0, "state": 1.0, "latent": 0.5, "reward": 0.5, "cost": 0.5, "cost_terms": 0.5, "success": 0.5, "reward_change": 0.5,
             **(weights or {})}
        out = self(batch, goal) if out is None else out
        frame = batch["mask"]
        terms: dict[str, torch.Tensor] = {}

        def masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            m = m.float()
            n = m.sum()
            return (x * m).sum() / (n.clamp(min=1.0) if count is None else count(n))

        am = batch.get("action_mask", frame) & frame
        action, imitate = policy_targets(batch)
        logits = self.action_logits(out["h_pol"]).float()  # (B, T, A, bins)
        target = self.action_bin(action)
        ce = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view(target.shape).mean(-1)
        terms["action"] = masked_mean(ce, imitate)
        # dynamics: the change of state from t to t + 1 in units of delta_scale (also without a known action:
        # the action token is then `no_action`, and the model learns what usually happens)
        moving = self.delta_scale > 0  # dimensions that change in the data
        unit = torch.where(moving, self.delta_scale, torch.ones_like(self.delta_scale))
        change = (batch[specs.STATE][:, 1:].float() - batch[specs.STATE][:, :-1].float()) / unit
        sm = batch.get("state_mask", frame) & frame
        err = ((self.state_head(out["h_act"][:, :-1]).float() - change).pow(2) * moving).sum(-1) / moving.sum().clamp(min=1)
        terms["state"] = masked_mean(err, sm[:, 1:] & sm[:, :-1])
        if self.pixel_enc is not None and specs.PIXELS in batch:  # the next image, in the CNN's own (frozen-target) space
            pm = batch.get("pixels_mask", frame) & frame
            target = out["pixel_latent"][:, 1:].detach()
            err = (self.latent_head(out["h_act"][:, :-1]).float() - target.float()).pow(2).mean(-1)
            terms["latent"] = masked_mean(err, pm[:, 1:] & pm[:, :-1])
        # reward function: reward, cost and success of each action (at its token or, hindsight, at the next observation's)
        pred, at, keep = self.action_outcomes(out, sm)

        def mask(m: torch.Tensor) -> torch.Tensor:
            return at(m) & keep

        om = mask(batch.get("reward_mask", am) & am)
        dense = at(batch[specs.REWARD].float() - self.cfg.success_bonus * batch[specs.SUCCESS].float())  # the bonus: the success head's
        r = (dense - self.reward_stats[0]) / self.reward_stats[1]
        terms["reward"] = masked_mean((pred["reward"].float() - r).pow(2), om)
        if self.change_head is not None:  # the dense reward's change from the step before, within the window
            change = (dense[:, 1:] - dense[:, :-1]) / self.change_scale
            terms["reward_change"] = masked_mean((pred["reward_change"][:, 1:].float() - change).pow(2), om[:, 1:] & om[:, :-1])
        cost_t = (at(batch[specs.COST]).float() > 0).float()
        terms["cost"] = masked_mean(F.binary_cross_entropy_with_logits(pred["cost_logit"].float(), cost_t, reduction="none"),
                                    mask(batch.get("cost_mask", am) & am))
        if "term_logits" in pred and specs.COST_BY_TERM in batch:  # each named cost, where the store records them
            bce = F.binary_cross_entropy_with_logits(pred["term_logits"].float(), (at(batch[specs.COST_BY_TERM]).float() > 0).float(), reduction="none")
            terms["cost_terms"] = masked_mean(bce.mean(-1), mask(batch[f"{specs.COST_BY_TERM}_mask"] & am))
        succ_t = at(batch[specs.SUCCESS]).float()
        terms["success"] = masked_mean(F.binary_cross_entropy_with_logits(pred["success_logit"].float(), succ_t, reduction="none"),
                                       mask(batch.get("success_mask", am) & am))
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
        """A cache holding the goal tokens of (B, goal_dim) instruction embeddings."""
        _, cache = self._trunk(self.goal_tokens(goal))
        return KVCache(cache, goal)

    def observe(self, cache: KVCache, state: torch.Tensor, timestep: torch.Tensor, pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """Append observation tokens (state (B, S), timestep (B,)); returns action logits (B, A, bins) and the cache."""
        h, cache = self.observe_hidden(cache, state, timestep, pixels)
        return self.action_logits(h), cache

    def observe_hidden(self, cache: KVCache, state: torch.Tensor, timestep: torch.Tensor, pixels: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, KVCache]:
        """:meth:`observe`, returning the observation tokens' hidden states (B, d) (what a ``reward_hindsight`` model
        reads the previous action's :meth:`outcomes` from) instead of action logits."""
        x = self.obs_tokens(state[:, None], timestep[:, None], None if pixels is None else pixels[:, None], goal=cache_goal(cache))
        h, cache = self._trunk(x, self._fit(cache))
        return h[:, -1], cache

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
        x = self.obs_tokens(state[:, None], timestep[:, None], None if pixels is None else pixels[:, None], goal=cache_goal(cache))
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
        return KVCache.of(cache).map(lambda t: torch.cat([t[:, :, :G], t[:, :, G + 2:]], dim=2))

    def next_state(self, state: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The predicted next state (raw units) from a state and the state-change head's output (units of ``delta_scale``)."""
        return state + delta * self.delta_scale

    # ------------------------------------------------------------------ dynamics: open-loop imagination
    def prefill(self, cache: KVCache, state: torch.Tensor, action: torch.Tensor, timestep: torch.Tensor,
                pixels: torch.Tensor | None = None) -> KVCache:
        """Append T whole past timesteps to a cache: states (B, T, S), actions (B, T, A), timesteps (B, T)
        [+ pixels (B, T, H, W, 3)]. The caller keeps the cache within ``context`` timesteps."""
        B, T = state.shape[:2]
        obs = self.obs_tokens(state, timestep, pixels, goal=cache_goal(cache))
        act = self.action_tokens(action, timestep)
        _, cache = self._trunk(torch.stack([obs, act], dim=2).view(B, 2 * T, -1), cache)
        return cache

    def imagine(self, cache: KVCache, state: torch.Tensor, timestep: torch.Tensor, actions: torch.Tensor, *,
                pixels: torch.Tensor | None = None, observed: bool = False) -> dict[str, torch.Tensor]:
        """Roll the dynamics head forward open loop: what ``actions`` would do from ``state``.

        ``cache`` holds the goal tokens and the episode's past whole timesteps (``start``, ``prefill``,
        or a policy's ``step`` cache), with batch 1 (shared by every candidate, expanded without a copy
        of the caller's cache) or N. ``state`` (1 or N, S) is the current raw state at episode timestep
        ``timestep`` (1 or N,); ``pixels`` (1 or N, H, W, 3) its image (pixel models). ``observed``
        says the cache already ends with that observation's token (a policy's cache after ``step``);
        else it is appended first. ``actions`` (N, H, A) are N candidate sequences of H actions.

        Returns ``state`` (N, H, S): raw states after each action (t + 1 .. t + H); ``reward`` (N, H),
        raw units; ``cost`` (N, H), the probability that the step costs something (the total's head; with
        ``cost_terms``, each named term's probability too, ``cost_terms`` (N, H, K)); ``success`` (N, H),
        the success probability after the step (a ``reward_hindsight`` model reads reward, cost and success at each
        imagined observation's token, as it does at a real one's); with pixels, ``latent`` (N, H, d): the predicted CNN
        encodings of the next images, which stand in for the images of imagined observations.
        At most ``context`` timesteps stay in view: the oldest past ones are dropped first.
        """
        N, H = actions.shape[:2]
        G = self.cfg.n_goal_tokens
        past = (cache[0][0].shape[2] - G) // 2  # whole timesteps before the current one
        excess = past + H - self.cfg.context
        if excess > 0:  # drop the oldest on the (small) shared cache, before it is expanded
            keep = list(range(G)) + list(range(G + 2 * min(excess, past), cache[0][0].shape[2]))
            idx = torch.tensor(keep, device=actions.device)
            cache = KVCache.of(cache).map(lambda t: t.index_select(2, idx))
            past -= min(excess, past)
        if cache[0][0].shape[0] != N:
            cache = KVCache.of(cache).map(lambda t: t.expand(N, *t.shape[1:]), rows=True)
        goal = cache_goal(cache)
        s = state.float().expand(N, -1)
        t = torch.as_tensor(timestep, device=actions.device).reshape(-1, 1).expand(N, 1)
        steps = t + torch.arange(H, device=actions.device)  # (N, H) episode timesteps of the actions
        act = self.action_tokens(actions, steps)  # every action token at once: (N, H, d)
        states, hidden, after = [], [], []  # after: hidden states of the imagined observations (hindsight readings)
        latent: torch.Tensor | None = None
        for h in range(H):
            x = act[:, h : h + 1]
            if h > 0 or not observed:
                if h == 0:
                    p = None if pixels is None else pixels.expand(N, *pixels.shape[1:])[:, None]
                    obs = self.obs_tokens(s[:, None], steps[:, :1], p, goal=goal)
                else:
                    obs = self.obs_tokens(s[:, None], steps[:, h : h + 1], goal=goal)
                    if latent is not None:
                        obs = obs + latent[:, None]
                x = torch.cat([obs, x], dim=1)
                if h >= self.cfg.context - past:  # only when H alone exceeds the context
                    cache = self._fit(cache)
            hid, cache = self._trunk(x, cache)
            if h > 0:
                after.append(hid[:, 0])  # the token of the state action h - 1 led to
            hid = hid[:, -1]
            s = self.next_state(s, self.state_head(hid).float())
            states.append(s)
            hidden.append(hid)
            if self.latent_head is not None:
                latent = self.latent_head(hid)
        hs = torch.stack(hidden, dim=1)  # (N, H, d): the other heads once, for every step together
        if self.cfg.reward_hindsight:  # the last action's outcome: its imagined observation's token, appended on its own
            last = self.obs_tokens(s[:, None], steps[:, -1:] + 1, goal=goal)
            if latent is not None:
                last = last + latent[:, None]
            after.append(self._trunk(last, self._fit(cache))[0][:, -1])
        o = self.outcomes(torch.stack(after, dim=1) if self.cfg.reward_hindsight else hs)
        out = {"state": torch.stack(states, dim=1), "reward": self.expected_reward(o),
               "cost": torch.sigmoid(o["cost_logit"].float()), "success": torch.sigmoid(o["success_logit"].float())}
        if "term_logits" in o:
            out["cost_terms"] = torch.sigmoid(o["term_logits"].float())  # (N, H, K), in the order of specs.COST_TERMS
        if self.latent_head is not None:
            out["latent"] = self.latent_head(hs)
        return out
