"""The tabletop environment: one class, every embodiment, task family and variant."""

from __future__ import annotations

import math
import string
from typing import Any, Sequence

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from embodied.errors import ConfigError
from embodied.specs import (
    ACTION_DIM,
    INFO_COST,
    INFO_INVALID,
    INFO_SUCCESS,
    INFO_WARNINGS,
    INSTRUCTION,
    N_HAZARDS,
    N_OBJECTS,
    N_ZONES,
    PIXEL_SIZES,
    PIXELS,
    SHAPES,
    STATE,
    STATE_DIM,
    state_slices,
)

from . import instructions as ins
from .constraints import COST_TERMS, Constraint, Fragile, KeepOut, SpeedLimit, Workspace, constraint_from, from_keywords
from .embodiments import EMBODIMENTS, make_embodiment
from .layouts import LAYOUTS, feasible, place_hazards
from .scene import HAZARD_RADIUS, Physics, bind, build_spec, make_renderer, show_object
from .tasks import FAMILY_REGISTRY, Goal, make_family, surface_gap

INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " ,.;:'!?-()"
INSTRUCTION_MAX_LEN = 200
STATE_BOUND = 50.0
"""State features are clipped to +-STATE_BOUND (only fast joint velocities ever reach it)."""
DIVERGENCE_WARNINGS = frozenset(
    int(w) for w in (mujoco.mjtWarning.mjWARN_BADQACC, mujoco.mjtWarning.mjWARN_BADQVEL, mujoco.mjtWarning.mjWARN_BADQPOS)
)
WARNING_NAMES = {int(w): w.name for w in mujoco.mjtWarning.__members__.values() if w.name != "mjNWARNING"}
REWARD_TERMS = ("reward_reach", "reward_goal", "reward_success", "reward_ctrl")
_SL = state_slices()
_JOINTS = slice(_SL["joint_cos"].start, _SL["joint_mask"].stop)


class TabletopEnv(gym.Env[dict[str, Any], np.ndarray]):
    """A walled tabletop with three objects, three goal zones and a robot fingertip.

    **Action space** ``Box(-1, 1, (2,), float32)`` (``control="ee"``): the fingertip velocity
    command, scaled to 0.4 m/s per axis; arms follow it through a Cartesian velocity servo
    on the fingertip (torques = J^T f, every physics step). ``control="joint"``: ``Box(-1, 1, (n,))`` joint velocities for an
    n-joint arm (the point mass's two slides), scaled to the embodiment's joint speed.
    Control runs at 20 Hz (25 physics steps of 2 ms).

    **Observation space** ``Dict``: ``state`` float32 (STATE_DIM,) with the fingertip, joint
    features (zero-padded to 3 joints), per-object pose, velocity, colour, shape and start
    position, goal zones and hazards (layout: :data:`embodied.specs.STATE_LAYOUT`);
    ``instruction``, the episode's goal in English; ``pixels`` uint8 (P, P, 3) from the
    overhead camera when ``pixels=P`` (64, 84 or 128), rendered headless without shadows or
    reflections.

    **Rewards** (each term in ``info``, the reward is their sum):
    ``reward_reach`` = -reach_weight x fingertip-to-target gap (m);
    ``reward_goal`` = -goal_weight x target-to-goal distance (m) (0 for reach);
    ``reward_success`` = success_bonus on steps where the task is solved;
    ``reward_ctrl`` = -ctrl_weight x |action|^2.

    **Costs** (indicators per step; each term in ``info``, total in ``info["cost"]``, zero at
    reset and zero while the constraint is off): ``cost_hazard`` while the fingertip is inside
    a keep-out zone (``hazards=k`` places k of them, clear of the fingertip's start, the target
    and its goal); ``cost_fragile`` when a contact force on a non-target object exceeds
    ``fragile_force`` newtons (``fragile=True``); ``cost_speed`` while the fingertip is faster
    than ``speed_limit`` m/s; ``cost_workspace`` while the fingertip is outside ``|x|, |y| <=
    workspace`` m. ``constraints`` adds constraint specs (:mod:`embodied.envs.constraints`,
    instances or dicts), including named ones: a keep-out zone of one colour, one fragile
    object; a reset then sets up a scene that has them.

    **Episode end**: terminated when the task succeeds (``terminate_on_success``) or when
    MuJoCo diverges (bad qacc, qvel or qpos: ``info["invalid"]`` is True and the warning names
    are in ``info["mujoco_warnings"]``); truncated by the registered step limit (60 reach,
    150 push_zone, 100 push_dir). Success is in ``info["is_success"]``.

    **Variants** are keyword arguments: ``embodiment`` (point, arm2, arm3), ``family``
    (reach, push_zone, push_dir), ``layout`` (scatter, rows), ``target_split`` (train,
    composition, novel), ``instruction_split`` (train, paraphrase, all), ``object_mass``
    (kg), ``object_friction``, ``action_turn`` (degrees: the end-effector velocity command is
    turned by this angle before it drives the fingertip, as on a robot mounted turned against
    the table frame the observations use; ``control="ee"`` only), ``hazards``, ``fragile``,
    ``speed_limit``, ``workspace``, ``constraints`` and the reward weights.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        *,
        embodiment: str = "point",
        family: str = "push_zone",
        layout: str = "scatter",
        target_split: str = "train",
        instruction_split: str = "train",
        object_mass: float = 0.2,
        object_friction: float = 0.6,
        action_turn: float = 0.0,
        pixels: int | None = None,
        control: str = "ee",
        hazards: int = 0,
        fragile: bool = False,
        fragile_force: float = 4.0,
        speed_limit: float | None = None,
        workspace: float | None = None,
        constraints: Sequence[Constraint | dict[str, Any]] = (),
        reach_weight: float = 1.0,
        goal_weight: float = 2.0,
        success_bonus: float = 10.0,
        ctrl_weight: float = 0.01,
        terminate_on_success: bool = True,
        frame_skip: int = 25,
        render_mode: str | None = None,
        render_size: int = 256,
    ) -> None:
        _check_choice("embodiment", embodiment, EMBODIMENTS)
        _check_choice("family", family, FAMILY_REGISTRY)
        _check_choice("layout", layout, LAYOUTS)
        _check_choice("target_split", target_split, ("train", "composition", "novel"))
        _check_choice("instruction_split", instruction_split, ("train", "paraphrase", "all"))
        _check_choice("control", control, ("ee", "joint"))
        _check_choice("render_mode", render_mode, (None, *self.metadata["render_modes"]))
        if pixels is not None:
            _check_choice("pixels", pixels, PIXEL_SIZES)
        if not 0 <= hazards <= N_HAZARDS:
            raise ConfigError(f"hazards={hazards} is out of range; use 0 to {N_HAZARDS}")
        for name, value in (("object_mass", object_mass), ("object_friction", object_friction), ("frame_skip", frame_skip)):
            if not value > 0:
                raise ConfigError(f"{name}={value} must be positive")
        if action_turn and control != "ee":
            raise ConfigError(f"action_turn={action_turn} turns the end-effector command: use control='ee' with it")
        turn = math.radians(float(action_turn))
        self._turn = None if not action_turn else np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
        self.embodiment = make_embodiment(embodiment)
        self.family = make_family(family)
        self.layout, self.target_split, self.instruction_split = layout, target_split, instruction_split
        self.pixels, self.control, self.frame_skip = pixels, control, int(frame_skip)
        self.constraints: tuple[Constraint, ...] = tuple(
            from_keywords(hazards, fragile, fragile_force, speed_limit, workspace) + [constraint_from(c) for c in constraints]
        )
        named_zones = [c.colour for c in self.constraints if isinstance(c, KeepOut) and c.colour]
        if len(set(named_zones)) > N_HAZARDS:
            raise ConfigError(f"at most {N_HAZARDS} keep-out colours fit in a scene, got {', '.join(sorted(set(named_zones)))}")
        named_objects = {(c.colour, c.shape): c.force for c in self.constraints if isinstance(c, Fragile) and c.colour}
        if len(named_objects) > N_OBJECTS - 1:
            raise ConfigError(f"at most {N_OBJECTS - 1} named fragile objects fit beside the target, got {len(named_objects)}")
        self._named_zones, self._named_objects = list(dict.fromkeys(named_zones)), named_objects
        any_keep_out = any(isinstance(c, KeepOut) for c in self.constraints)
        self.n_hazards = max(hazards, len(self._named_zones), 1 if any_keep_out else 0)
        self._keep_out_all = any(isinstance(c, KeepOut) and not c.colour for c in self.constraints)
        unnamed = [c.force for c in self.constraints if isinstance(c, Fragile) and not c.colour]
        self.fragile, self.fragile_force = bool(unnamed), min(unnamed, default=fragile_force)
        self.speed_limit = min((c.limit for c in self.constraints if isinstance(c, SpeedLimit)), default=None)
        self.workspace = min((c.half_extent for c in self.constraints if isinstance(c, Workspace)), default=None)
        self.weights = dict(reach=reach_weight, goal=goal_weight, success=success_bonus, ctrl=ctrl_weight)
        self.terminate_on_success = terminate_on_success
        self.render_mode, self.render_size = render_mode, render_size

        self.mj_spec = build_spec(self.embodiment, Physics(mass=object_mass, friction=object_friction), control)
        self.model = self.mj_spec.compile()
        self.data = mujoco.MjData(self.model)
        self.embodiment.bind(self.model)
        self.h = bind(self.model)
        self.targets = ins.target_choices(family, target_split)
        self.palette = ins.TRAIN_COLOURS + (ins.NOVEL_COLOURS if target_split == "novel" else ())

        act_dim = ACTION_DIM if control == "ee" else self.embodiment.dof
        self.action_space = spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
        obs_spaces: dict[str, spaces.Space] = {
            STATE: spaces.Box(-STATE_BOUND, STATE_BOUND, (STATE_DIM,), np.float32),
            INSTRUCTION: spaces.Text(INSTRUCTION_MAX_LEN, min_length=1, charset=INSTRUCTION_CHARSET),
        }
        if pixels is not None:
            obs_spaces[PIXELS] = spaces.Box(0, 255, (pixels, pixels, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)

        self._state = np.zeros(STATE_DIM, np.float64)
        self._obj_block = np.zeros((N_OBJECTS, 14))
        self._obj_qpos = self.h.obj_qpos[:, :2].ravel()
        self._obj_yaw = self.h.obj_qpos[:, 2]
        self._obj_qvel = self.h.obj_qvel[:, :2].ravel()
        self._renderers: dict[int, mujoco.Renderer] = {}
        self._shapes: list[str] = ["cube"] * N_OBJECTS
        self._hazard_pos = np.full((N_HAZARDS, 2), 5.0)
        self.instruction = ""
        self.goal = None
        self._fragile_geoms: dict[int, float] = {}
        self._keep_out = np.zeros(0, dtype=int)
        self._warn_counts = self.data.warning.number.copy()

    # ------------------------------------------------------------------ episode set-up
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        rng = self.np_random
        m, d = self.model, self.data
        task = self._requested_task(options)
        mujoco.mj_resetData(m, d)
        for _ in range(10_000):
            self.embodiment.reset(d, rng)
            mujoco.mj_kinematics(m, d)
            ee = self.embodiment.ee_pos(d).copy()
            objs, zones = LAYOUTS[self.layout](rng)
            target = int(rng.integers(N_OBJECTS))
            goal = self.family.choose_goal(rng, target, objs, zones)
            if task is not None and task.direction and goal.direction != task.direction:
                continue
            if feasible(self.family.path(goal, objs, ee), target, objs, zones, ee, self.family.pushes, goal.zone):
                break
        else:  # pragma: no cover - the samplers make this unreachable in practice
            raise RuntimeError(f"could not sample a feasible {self.layout} layout for {self.family.name}")
        self.goal = goal

        # Colours and shapes: the target from the split's allowed pairs, distractors with other colours.
        targets = [t for t in self.targets if t not in self._named_objects] if self._named_objects else self.targets
        colour, shape = targets[int(rng.integers(len(targets)))]
        if task is not None:
            colour, shape = task.colour, task.shape
        others = [c for c in self.palette if c != colour]
        picks = rng.choice(len(others), N_OBJECTS - 1, replace=False)
        colours = [others[i] for i in picks]
        colours.insert(target, colour)
        shapes = [SHAPES[int(i)] for i in rng.integers(len(SHAPES), size=N_OBJECTS)]
        shapes[target] = shape
        zone_colours = [ins.TRAIN_COLOURS[int(i)] for i in rng.choice(len(ins.TRAIN_COLOURS), N_ZONES, replace=False)]
        if task is not None and task.zone and goal.zone >= 0:  # the goal zone takes the asked colour
            if task.zone in zone_colours:
                j = zone_colours.index(task.zone)
                zone_colours[j], zone_colours[goal.zone] = zone_colours[goal.zone], zone_colours[j]
            else:
                zone_colours[goal.zone] = task.zone
        spare = [c for c in ins.TRAIN_COLOURS if c not in zone_colours]
        hazard_colours = [spare[int(i)] for i in rng.choice(len(spare), N_HAZARDS, replace=False)]
        if self._named_zones:
            zone_colours, hazard_colours = self._name_hazards(zone_colours, hazard_colours, task.zone if task is not None else "")
        if self._named_objects:
            self._name_objects(colours, shapes, target)

        qpos = d.qpos
        for i in range(N_OBJECTS):
            qpos[self.h.obj_qpos[i]] = (objs[i, 0], objs[i, 1], rng.uniform(-np.pi, np.pi))
            show_object(m, self.h, i, shapes[i], ins.COLOURS[colours[i]])
        d.qvel[self.h.obj_qvel.ravel()] = 0.0
        for i in range(N_ZONES):
            d.mocap_pos[self.h.zone_mocap[i]] = (zones[i, 0], zones[i, 1], 0.0)
            m.geom_rgba[self.h.zone_geoms[i]] = (*ins.COLOURS[zone_colours[i]], 0.55)
        # Keep-out zones clear of the fingertip's start (an episode must not begin in violation), the target and its goal.
        avoid = [ee, objs[target], goal.point] + ([zones[goal.zone]] if goal.zone >= 0 else [])
        self._hazard_pos = place_hazards(rng, self.n_hazards, avoid)
        for i in range(N_HAZARDS):
            d.mocap_pos[self.h.hazard_mocap[i]] = (*self._hazard_pos[i], 0.0)
            m.geom_rgba[self.h.hazard_geoms[i]] = (*ins.COLOURS[hazard_colours[i]], 1.0)
        mujoco.mj_forward(m, d)

        self._shapes, self._colours = shapes, colours
        self._zone_colours, self._hazard_colours = zone_colours, hazard_colours[: self.n_hazards]
        self._obj_start = objs.copy()
        geom = lambda i: int(self.h.obj_geoms[i, SHAPES.index(shapes[i])])  # noqa: E731
        self._fragile_geoms = {geom(i): self.fragile_force for i in range(N_OBJECTS) if i != target and self.fragile}
        for i in range(N_OBJECTS):
            force = self._named_objects.get((colours[i], shapes[i]))
            if i != target and force is not None:
                self._fragile_geoms[geom(i)] = min(force, self._fragile_geoms.get(geom(i), force))
        self._keep_out = np.array([i for i in range(self.n_hazards)
                                   if self._keep_out_all or self._hazard_colours[i] in self._named_zones], dtype=int)
        self.instruction = ins.sample_instruction(
            rng, self.family.name, self.instruction_split, colour, shape,
            zone=zone_colours[goal.zone] if goal.zone >= 0 else "", direction=goal.direction,
        )
        if options and options.get("instruction"):  # the words the user said, for a requested task
            self.instruction = str(options["instruction"])
        self._fill_static_state(objs, zones, shapes, colours, zone_colours)
        self._warn_counts = d.warning.number.copy()
        obs = self._observation()
        info = self._step_info(np.zeros(self.action_space.shape), reset=True)[1]
        return obs, info

    def _name_hazards(self, zone_colours: list[str], hazard_colours: list[str], requested_zone: str) -> tuple[list[str], list[str]]:
        """Colours so that the named keep-out colours are hazards (first slots) and no goal zone shares them."""
        named = self._named_zones
        if requested_zone in named:
            raise ConfigError(f"the goal zone is {requested_zone}, the same colour as a keep-out zone; name another keep-out colour")
        free = [c for c in ins.TRAIN_COLOURS if c not in named and c not in zone_colours]
        zones = [free.pop(0) if c in named else c for c in zone_colours]
        rest = [c for c in hazard_colours + list(ins.TRAIN_COLOURS) if c not in named and c not in zones]
        return zones, list(dict.fromkeys(named + rest))[:N_HAZARDS]

    def _name_objects(self, colours: list[str], shapes: list[str], target: int) -> None:
        """Make the named fragile objects distractors of this scene (in place); the target cannot be one."""
        if (colours[target], shapes[target]) in self._named_objects:
            raise ConfigError(f"the {colours[target]} {shapes[target]} is the task's target and cannot also be fragile; name another object")
        slots = [i for i in range(N_OBJECTS) if i != target]
        for (colour, shape), slot in zip(self._named_objects, slots):
            colours[slot], shapes[slot] = colour, shape
        used = {colours[target], *(c for c, _ in self._named_objects)}
        free = [c for c in self.palette if c not in used]
        for slot in slots[len(self._named_objects):]:  # the other distractors keep distinct colours
            if colours[slot] in used:
                colours[slot] = free.pop(0)
            used.add(colours[slot])

    def _requested_task(self, options: dict[str, Any] | None) -> ins.Task | None:
        """``options["task"]`` (an :class:`~embodied.envs.instructions.Task` or its dict) checked against this env."""
        raw = (options or {}).get("task")
        if raw is None:
            return None
        task = raw if isinstance(raw, ins.Task) else ins.Task(**raw)
        if task.family != self.family.name:
            raise ConfigError(f"this env's task family is {self.family.name}, the requested task is {task.family}; pick an env of that family")
        if task.colour not in ins.COLOURS or task.shape not in SHAPES:
            raise ConfigError(f"no {task.colour} {task.shape} in the suite: colours {', '.join(ins.COLOURS)}, shapes {', '.join(SHAPES)}")
        if task.zone and task.zone not in ins.TRAIN_COLOURS:
            raise ConfigError(f"no {task.zone} zone: zones are {', '.join(ins.TRAIN_COLOURS)}")
        if task.direction and task.direction not in ins.DIRECTIONS:
            raise ConfigError(f"no direction {task.direction!r}: directions are {', '.join(ins.DIRECTIONS)}")
        return task

    def _fill_static_state(self, objs, zones, shapes, colours, zone_colours) -> None:
        ob = self._obj_block
        ob[:] = 0.0
        for i in range(N_OBJECTS):
            ob[i, 6:9] = ins.COLOURS[colours[i]]
            ob[i, 9 + SHAPES.index(shapes[i])] = 1.0
            ob[i, 12:14] = objs[i]
        s = self._state
        zb = s[_SL["zones"]].reshape(N_ZONES, 6)
        for i in range(N_ZONES):
            zb[i] = (*zones[i], self.model.geom_size[self.h.zone_geoms[i], 0], *ins.COLOURS[zone_colours[i]])
        hb = s[_SL["hazards"]].reshape(N_HAZARDS, 7)
        hb[:] = 0.0
        for i in range(self.n_hazards):
            hb[i] = (*self._hazard_pos[i], HAZARD_RADIUS, *ins.COLOURS[self._hazard_colours[i]], 1.0)

    # ------------------------------------------------------------------ stepping
    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action has shape {a.shape}; this env takes {self.action_space.shape}")
        d = self.data
        command = a if self._turn is None else np.clip(self._turn @ a, -1.0, 1.0)
        self.embodiment.set_action(d, command, self.control)
        mujoco.mj_step(self.model, d, nstep=self.frame_skip)
        reward, info = self._step_info(a)
        terminated = (info[INFO_SUCCESS] and self.terminate_on_success) or info[INFO_INVALID]
        return self._observation(), reward, bool(terminated), False, info

    def _step_info(self, a: np.ndarray, reset: bool = False) -> tuple[float, dict[str, Any]]:
        d, g = self.data, self.goal
        warnings: list[str] = []
        invalid = False
        counts = d.warning.number  # one array read; compared as a whole on the hot path
        if not np.array_equal(counts, self._warn_counts):
            changed = np.flatnonzero(counts != self._warn_counts)
            self._warn_counts = counts.copy()
            warnings = [WARNING_NAMES.get(int(i), f"mjWARN_{int(i)}") for i in changed]
            invalid = any(int(i) in DIVERGENCE_WARNINGS for i in changed)
        obj = d.qpos[self._obj_qpos].reshape(N_OBJECTS, 2)
        if not np.isfinite(obj).all():
            invalid = True
        ee = self.embodiment.ee_pos(d)
        t = g.target
        gap = surface_gap(ee, obj[t], float(d.qpos[self._obj_yaw[t]]), self._shapes[t])
        dist, success = self.family.progress(g, obj, self._obj_start, gap)
        w = self.weights
        terms = {
            "reward_reach": -w["reach"] * max(gap, 0.0),
            "reward_goal": -w["goal"] * dist,
            "reward_success": w["success"] * float(success),
            "reward_ctrl": -w["ctrl"] * float(a @ a),
        }
        costs = dict.fromkeys(COST_TERMS, 0.0) if reset else self.cost_terms(d)
        if invalid:
            terms = dict.fromkeys(REWARD_TERMS, 0.0)
            success = False
        info: dict[str, Any] = {**terms, **costs}
        info[INFO_COST] = sum(costs.values())
        info[INFO_SUCCESS] = bool(success)
        info[INFO_INVALID] = invalid
        info[INFO_WARNINGS] = warnings
        return sum(terms.values()), info

    def cost_terms(self, d: mujoco.MjData) -> dict[str, float]:
        """The indicator cost terms (0.0 or 1.0 each) of ``d``, a state of this env's model in the current episode.

        The env's own step passes ``self.data``; a lookahead passes a scratch copy.
        """
        costs = dict.fromkeys(COST_TERMS, 0.0)
        ee = self.embodiment.ee_pos(d)
        if len(self._keep_out):
            costs["cost_hazard"] = float(np.any(np.hypot(*(self._hazard_pos[self._keep_out] - ee).T) < HAZARD_RADIUS))
        if self._fragile_geoms:
            costs["cost_fragile"] = float(self._fragile_contact(d))
        if self.speed_limit is not None:
            costs["cost_speed"] = float(np.hypot(*self.embodiment.ee_vel(d)) > self.speed_limit)
        if self.workspace is not None:
            costs["cost_workspace"] = float(np.max(np.abs(ee)) > self.workspace)
        return costs

    def _fragile_contact(self, d: mujoco.MjData) -> bool:
        force = np.zeros(6)
        for i in range(d.ncon):
            c = d.contact[i]
            limit = self._fragile_geoms.get(c.geom1, self._fragile_geoms.get(c.geom2))
            if limit is not None:
                mujoco.mj_contactForce(self.model, d, i, force)
                if force[0] > limit:
                    return True
        return False

    def _observation(self) -> dict[str, Any]:
        d, s, ob = self.data, self._state, self._obj_block
        emb = self.embodiment
        s[_SL["ee_pos"]] = emb.ee_pos(d)
        s[_SL["ee_vel"]] = emb.ee_vel(d)
        emb.joint_features(d, s[_JOINTS])
        yaw = d.qpos[self._obj_yaw]
        ob[:, 0:2] = d.qpos[self._obj_qpos].reshape(N_OBJECTS, 2)
        ob[:, 2] = np.cos(yaw)
        ob[:, 3] = np.sin(yaw)
        ob[:, 4:6] = d.qvel[self._obj_qvel].reshape(N_OBJECTS, 2)
        s[_SL["objects"]] = ob.ravel()
        obs: dict[str, Any] = {STATE: np.clip(s, -STATE_BOUND, STATE_BOUND).astype(np.float32), INSTRUCTION: self.instruction}
        if self.pixels is not None:
            obs[PIXELS] = self._render(self.pixels)
        return obs

    # ------------------------------------------------------------------ experts and rendering
    def other_goal(self, rng: np.random.Generator) -> Goal | None:
        """Another goal this episode's family could have asked of the same target object (another direction or zone),
        drawn with ``rng``; None where the family has no other (reach)."""
        zones = np.array([self.data.mocap_pos[i][:2] for i in self.h.zone_mocap])
        own = (self.goal.direction, self.goal.zone)
        for _ in range(100):
            g = self.family.choose_goal(rng, self.goal.target, self._obj_start, zones)
            if (g.direction, g.zone) != own:
                return g
        return None

    def expert_action(self, goal: Goal | None = None) -> np.ndarray:
        """The scripted expert's noiseless action for the current state, in this env's action space; ``goal``: the
        expert of another goal for the same scene (default: this episode's)."""
        d, g = self.data, goal or self.goal
        emb = self.embodiment
        ee = emb.ee_pos(d).copy()
        obj = d.qpos[self.h.obj_qpos[g.target, :2]]
        v = self.family.expert_velocity(g, ee, obj, emb.max_speed * 0.9)
        if self.control == "ee":
            a = v / emb.max_speed
            if self._turn is not None:  # the action that the turned mounting turns into v
                a = self._turn.T @ a
            return np.clip(a, -1.0, 1.0).astype(np.float32)
        qd = emb.joint_velocity_for(d, v)
        return np.clip(qd / emb.max_joint_speed, -1.0, 1.0).astype(np.float32)

    def _render(self, size: int) -> np.ndarray:
        r = self._renderers.get(size)
        if r is None:
            r = self._renderers[size] = make_renderer(self.model, size)
        r.update_scene(self.data, camera=self.h.camera)
        return r.render()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._render(self.render_size)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    # ------------------------------------------------------------------ introspection
    @property
    def task(self) -> dict[str, Any]:
        """What the current episode asks for (target colour/shape, zone colour, direction)."""
        g = self.goal
        return {
            "family": self.family.name,
            "colour": self._colours[g.target],
            "shape": self._shapes[g.target],
            "zone": self._zone_colours[g.zone] if g.zone >= 0 else None,
            "direction": g.direction or None,
        }


def _check_choice(name: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not supported; use one of: {', '.join(map(repr, allowed))}")
