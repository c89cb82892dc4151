"""Canonical keys and feature specs: the vocabulary every folder of the stack shares.

Observation dicts, episode stores and model batches all use these names, so that a dataset
written by ``embodied collect`` feeds the model without renaming anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import numpy as np

# Observation keys (gymnasium Dict observation of every embodied env).
STATE: Final = "state"
"""float32 (STATE_DIM,): proprioception, object and zone features; layout in STATE_LAYOUT."""
PIXELS: Final = "pixels"
"""uint8 (H, W, 3): overhead camera image, H = W in PIXEL_SIZES."""
INSTRUCTION: Final = "instruction"
"""str: the natural-language goal of the episode."""

# Transition keys (datasets and model batches).
ACTION: Final = "action"
EXPERT_ACTION: Final = "expert_action"
"""(A,) what the scripted expert would have done at this step, whoever acted: the policy head's label where a store
has it (DART, Laskey et al. 2017: episodes of a noisy expert then show how to recover from the drift they cause)."""
REWARD: Final = "reward"
COST: Final = "cost"
COST_TERMS: Final = ("cost_hazard", "cost_fragile", "cost_speed", "cost_workspace")
"""The named indicator costs every env's ``info`` carries (Safety-Gymnasium semantics); ``cost`` is their sum."""
COST_BY_TERM: Final = "cost_terms"
"""float32 (len(COST_TERMS),): each cost term of the step, in the order of COST_TERMS. Where a store has it, the model
learns one cost output per term, so that a cause that is common in the data (the speed limit) does not stand in
for a rare one (a keep-out zone)."""
SUCCESS: Final = "success"
TERMINATED: Final = "terminated"
TRUNCATED: Final = "truncated"
VALID: Final = "valid"

# Keys of the ``info`` dict returned by every embodied env.
INFO_SUCCESS: Final = "is_success"
INFO_COST: Final = "cost"
INFO_INVALID: Final = "invalid"
INFO_WARNINGS: Final = "mujoco_warnings"
REWARD_PREFIX: Final = "reward_"
COST_PREFIX: Final = "cost_"

PIXEL_SIZES: Final = (64, 84, 128)
ACTION_DIM: Final = 2
"""End-effector velocity command (vx, vy) in [-1, 1]^2, shared by every embodiment."""

# Fixed-size state vector shared by every embodiment, so one policy moves between them.
MAX_JOINTS: Final = 3
N_OBJECTS: Final = 3
N_ZONES: Final = 3
N_HAZARDS: Final = 2
SHAPES: Final = ("cube", "ball", "cylinder")

OBJECT_FEATURES: Final = 14
"""Per object slot: pos 2 (m), yaw cos/sin 2, vel 2 (m/s), rgb 3, shape one-hot 3, start pos 2 (m)."""
ZONE_FEATURES: Final = 6
"""Per goal zone: pos 2 (m), radius 1 (m), rgb 3."""
HAZARD_FEATURES: Final = 7
"""Per hazard zone: pos 2 (m), radius 1 (m), rgb 3, active 1."""

STATE_LAYOUT: Final[tuple[tuple[str, int], ...]] = (
    ("ee_pos", 2),  # end-effector (x, y), metres, table frame
    ("ee_vel", 2),  # end-effector velocity, m/s
    ("joint_cos", MAX_JOINTS),  # cos of joint angles, zero-padded
    ("joint_sin", MAX_JOINTS),
    ("joint_vel", MAX_JOINTS),  # rad/s, zero-padded
    ("joint_mask", MAX_JOINTS),  # 1 where the embodiment has that joint
    ("objects", N_OBJECTS * OBJECT_FEATURES),
    ("zones", N_ZONES * ZONE_FEATURES),
    ("hazards", N_HAZARDS * HAZARD_FEATURES),
)
STATE_DIM: Final = sum(n for _, n in STATE_LAYOUT)


def state_slices() -> dict[str, slice]:
    """Name -> slice of the state vector, in STATE_LAYOUT order."""
    out, i = {}, 0
    for name, n in STATE_LAYOUT:
        out[name] = slice(i, i + n)
        i += n
    return out


def dynamic_state_dims() -> dict[str, list[int]]:
    """The parts of the state that change within an episode, as indices into the state vector.

    ``ee_pos`` (m), ``ee_vel`` (m/s), ``joints`` (joint cos and sin, joint velocity in rad/s;
    zero for the point mass), ``object_pos`` (m), ``object_yaw`` (cos and sin), ``object_vel``
    (m/s). Everything else (colours, shapes, start positions, zones, hazards, joint masks) is set
    at reset; open-loop errors are measured on these dimensions only.
    """
    sl = state_slices()
    obj = sl["objects"].start

    def per(a: int, b: int) -> list[int]:  # entries a..b-1 of every object slot's 14
        return [obj + 14 * k + j for k in range(N_OBJECTS) for j in range(a, b)]

    return {
        "ee_pos": list(range(sl["ee_pos"].start, sl["ee_pos"].stop)),
        "ee_vel": list(range(sl["ee_vel"].start, sl["ee_vel"].stop)),
        "joints": list(range(sl["joint_cos"].start, sl["joint_vel"].stop)),
        "object_pos": per(0, 2),
        "object_yaw": per(2, 4),
        "object_vel": per(4, 6),
    }


DYNAMIC_DIMS: Final = tuple(sorted(i for dims in dynamic_state_dims().values() for i in dims))
"""Indices of every state dimension that changes within an episode (31 of STATE_DIM)."""


PROPRIO_FEATURES: Final = ("ee_pos", "ee_vel", "joint_cos", "joint_sin", "joint_vel", "joint_mask")
"""The parts of the state an embodiment senses about itself (the rest describes the scene)."""


VELOCITY_FEATURES: Final = ("ee_vel", "joint_vel")
"""The embodiment's own velocities: with velocity commands they echo the previous action."""

POLICY_FEATURES: Final = ("joint_cos", "joint_sin", "joint_mask")
"""What an entity model's present-only policy sees of its own state besides the scene (ModelConfig.policy_history):
its posture, not where it is on the table (entities come relative to the end effector, so the policy is the same
anywhere on the table and cannot memorise demonstrations by their positions) nor its velocities (which echo the
previous action)."""

STATE_INPUTS: Final = ("full", "proprio", "no_velocity")
"""What a model's observation token may see of the state (ModelConfig.state_input)."""


def state_input_mask(kind: str, dim: int = STATE_DIM) -> list[float]:
    """Per state dimension, 1.0 where a model with ``state_input=kind`` sees it, else 0.0 ("policy": what a
    present-only policy sees of the state vector itself, POLICY_FEATURES): "full" sees everything,
    "proprio" only the embodiment itself (the scene must come from pixels), "no_velocity" everything but the
    embodiment's velocities (which let a policy copy its previous action instead of reading the goal)."""
    if kind == "full":
        return [1.0] * dim
    if kind == "policy":  # the embodiment's posture alone (see POLICY_FEATURES)
        keep = [0.0] * dim
        for name, sl in state_slices().items():
            if name in POLICY_FEATURES:
                keep[sl] = [1.0] * (sl.stop - sl.start)
        return keep
    keep = [0.0 if kind == "proprio" else 1.0] * dim
    for name, sl in state_slices().items():
        if (kind == "proprio" and name in PROPRIO_FEATURES) or (kind == "no_velocity" and name in VELOCITY_FEATURES):
            keep[sl] = [1.0 if kind == "proprio" else 0.0] * (sl.stop - sl.start)
    return keep


def exploratory_policy(name: str) -> bool:
    """Is ``name`` (an episode's ``policy`` metadata) a recorder whose actions are not the expert's: ``noisy:SIGMA``,
    ``hasty[:SIGMA]`` (the expert's sped up), ``random``, ``halt`` (the expert's until it stalls), ``wander`` or
    ``rl:RUN`` (a reinforcement-learning policy)?"""
    return name in ("random", "halt", "wander") or name.startswith(("noisy", "hasty", "rl:"))


# Seeds. Training data and evaluation never share an episode seed: collection draws from
# [0, EVAL_SEED_START) and evaluation from [EVAL_SEED_START, 2**32). This is the one place
# the rule lives; `embodied collect` and `embodied eval` both call these functions.
EVAL_SEED_START: Final = 2**31


def collection_seed(base: int, number: int) -> int:
    """Env seed of episode ``number`` of a collection run with seed ``base`` (always < EVAL_SEED_START)."""
    if base < 0 or number < 0:
        raise ValueError(f"seeds and episode numbers are >= 0, got base={base}, number={number}")
    return (base * 1_000_003 + number) % EVAL_SEED_START


def eval_seeds(n: int, offset: int = 0) -> list[int]:
    """The fixed evaluation seed list: ``n`` seeds from EVAL_SEED_START + offset (never a training seed)."""
    if n < 0 or offset < 0 or EVAL_SEED_START + offset + n > 2**32:
        raise ValueError(f"eval seeds need 0 <= offset and offset + n <= 2**31, got offset={offset}, n={n}")
    return [EVAL_SEED_START + offset + i for i in range(n)]


# Instructions as numbers, for vectorised envs (stable-baselines3's VecEnvs hold arrays only).
INSTRUCTION_BYTES: Final = 256
"""Length of the uint8 array an instruction travels as: UTF-8, zero padded (see encode_instruction)."""


def encode_instruction(text: str) -> "np.ndarray":
    """An instruction as a (INSTRUCTION_BYTES,) uint8 array: its UTF-8 bytes, zero padded."""
    import numpy as np

    raw = text.encode("utf-8")
    if len(raw) > INSTRUCTION_BYTES:
        raise ValueError(f"instruction longer than {INSTRUCTION_BYTES} bytes: {text[:40]!r}...")
    out = np.zeros(INSTRUCTION_BYTES, dtype=np.uint8)
    out[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def decode_instruction(value: "str | np.ndarray") -> str:
    """The instruction from its string or its uint8 array form."""
    if isinstance(value, str):
        return value
    import numpy as np

    raw = np.asarray(value, dtype=np.uint8).tobytes().rstrip(b"\0")
    return raw.decode("utf-8")
