"""Tabletop scenes built in code with :class:`mujoco.MjSpec`.

A scene is a walled table with object slots, coloured goal zones, hazard (keep-out) zones,
an overhead camera and one embodiment. Each object slot holds one geom per shape; a reset
switches on the episode's shape and colour (contact bits, group and RGBA), so one compiled
model serves every colour x shape combination and the observation layout never changes.
Zones and hazards are mocap bodies, moved per episode through ``data.mocap_pos``.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from embodied.specs import N_HAZARDS, N_OBJECTS, N_ZONES, SHAPES

from .embodiments import OBJECT_Z, Embodiment

HALF_EXTENT = 0.40
"""Half side (m) of the square area inside the walls."""
OBJECT_HALF = 0.025
"""Half size (m) of every object: cube half-edge, ball radius, cylinder radius and half-height."""
ZONE_RADIUS = 0.06
HAZARD_RADIUS = 0.07
HIDDEN_GROUP = 5
"""Geom group of inactive shape geoms; the renderer shows groups 0-2 only."""
TIMESTEP = 0.002
"""Physics step (s)."""


@dataclass(frozen=True)
class Physics:
    """Physical parameters of the objects; held-out variants change them."""

    mass: float = 0.2
    """Object mass (kg)."""
    friction: float = 0.6
    """Coefficient of sliding friction against the table (emulated by joint friction loss)."""
    damping: float = 0.3
    """Viscous damping (N s/m) of object sliding."""


@dataclass
class SceneHandles:
    """Ids and addresses into the compiled model that the env reads every step."""

    obj_qpos: np.ndarray  # (N_OBJECTS, 3) qpos addresses of x, y, yaw
    obj_qvel: np.ndarray  # (N_OBJECTS, 3) dof addresses
    obj_geoms: np.ndarray  # (N_OBJECTS, len(SHAPES)) geom ids
    zone_mocap: np.ndarray  # (N_ZONES,) mocap ids
    zone_geoms: np.ndarray
    hazard_mocap: np.ndarray  # (N_HAZARDS,)
    hazard_geoms: np.ndarray
    tip_geom: int
    camera: int


def build_spec(embodiment: Embodiment, physics: Physics, control: str = "ee") -> mujoco.MjSpec:
    """The scene's spec: table, walls, object slots, zones, hazards, camera, light, robot."""
    spec = mujoco.MjSpec()
    spec.modelname = f"tabletop_{embodiment.name}"
    spec.option.timestep = TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.visual.global_.offwidth = 256
    spec.visual.global_.offheight = 256
    world = spec.worldbody
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.25, 0.25, 0.25]
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]
    world.add_light(pos=[0, 0, 3.0], dir=[0, 0, -1], castshadow=False, diffuse=[0.45, 0.45, 0.45], specular=[0.05, 0.05, 0.05])
    e = HALF_EXTENT
    world.add_geom(
        name="table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[e + 0.04, e + 0.04, 0.01],
        rgba=[0.82, 0.78, 0.70, 1], contype=0, conaffinity=0,
    )
    for name, pos, size in (
        ("wall_left", [-e - 0.02, 0, 0.03], [0.02, e + 0.04, 0.03]),
        ("wall_right", [e + 0.02, 0, 0.03], [0.02, e + 0.04, 0.03]),
        ("wall_bottom", [0, -e - 0.02, 0.03], [e, 0.02, 0.03]),
        ("wall_top", [0, e + 0.02, 0.03], [e, 0.02, 0.03]),
    ):
        world.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_BOX, pos=pos, size=size, rgba=[0.45, 0.35, 0.25, 1])
    fovy = float(np.degrees(2 * np.arctan((e + 0.045) / 1.0)))
    world.add_camera(name="overhead", pos=[0, 0, 1.0], fovy=fovy)

    frictionloss = physics.friction * physics.mass * 9.81
    for i in range(N_OBJECTS):
        body = world.add_body(name=f"obj{i}", pos=[0, 0, OBJECT_Z])
        for axis_name, jtype, axis in (
            ("x", mujoco.mjtJoint.mjJNT_SLIDE, [1, 0, 0]),
            ("y", mujoco.mjtJoint.mjJNT_SLIDE, [0, 1, 0]),
            ("yaw", mujoco.mjtJoint.mjJNT_HINGE, [0, 0, 1]),
        ):
            rot = axis_name == "yaw"
            body.add_joint(
                name=f"obj{i}_{axis_name}", type=jtype, axis=axis,
                damping=physics.damping * (0.002 if rot else 1.0),
                frictionloss=frictionloss * (0.01 if rot else 1.0),
            )
        h = OBJECT_HALF
        for shape in SHAPES:
            gtype, size = {
                "cube": (mujoco.mjtGeom.mjGEOM_BOX, [h, h, h]),
                "ball": (mujoco.mjtGeom.mjGEOM_SPHERE, [h, 0, 0]),
                "cylinder": (mujoco.mjtGeom.mjGEOM_CYLINDER, [h, h, 0]),
            }[shape]
            body.add_geom(
                name=f"obj{i}_{shape}", type=gtype, size=size, mass=physics.mass / len(SHAPES),
                friction=[0.3, 0.005, 0.0001], rgba=[1, 1, 1, 0], group=HIDDEN_GROUP,
                # collidable at compile time so the body's contact masks include it; reset switches shapes
            )
    for prefix, count, radius in (("zone", N_ZONES, ZONE_RADIUS), ("hazard", N_HAZARDS, HAZARD_RADIUS)):
        for i in range(count):
            body = world.add_body(name=f"{prefix}{i}", mocap=True, pos=[0, 0, -1])
            z = 0.0012 if prefix == "zone" else 0.0008
            body.add_geom(
                name=f"{prefix}{i}_disc", type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[radius, z, 0],
                rgba=[1, 1, 1, 0.6], contype=0, conaffinity=0,
            )
            if prefix == "hazard":  # a dark rim tells keep-out zones from goal zones
                body.add_geom(
                    name=f"{prefix}{i}_rim", type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[radius + 0.01, z / 2, 0],
                    rgba=[0.1, 0.1, 0.1, 1], contype=0, conaffinity=0,
                )
    embodiment.build(spec, control)
    return spec


def bind(model: mujoco.MjModel) -> SceneHandles:
    """Look up the ids the env needs in a model compiled from :func:`build_spec`."""
    name2id = mujoco.mj_name2id
    J, G, B = mujoco.mjtObj.mjOBJ_JOINT, mujoco.mjtObj.mjOBJ_GEOM, mujoco.mjtObj.mjOBJ_BODY
    joints = [[name2id(model, J, f"obj{i}_{a}") for a in ("x", "y", "yaw")] for i in range(N_OBJECTS)]
    return SceneHandles(
        obj_qpos=np.array([[model.jnt_qposadr[j] for j in js] for js in joints]),
        obj_qvel=np.array([[model.jnt_dofadr[j] for j in js] for js in joints]),
        obj_geoms=np.array([[name2id(model, G, f"obj{i}_{s}") for s in SHAPES] for i in range(N_OBJECTS)]),
        zone_mocap=np.array([model.body_mocapid[name2id(model, B, f"zone{i}")] for i in range(N_ZONES)]),
        zone_geoms=np.array([name2id(model, G, f"zone{i}_disc") for i in range(N_ZONES)]),
        hazard_mocap=np.array([model.body_mocapid[name2id(model, B, f"hazard{i}")] for i in range(N_HAZARDS)]),
        hazard_geoms=np.array([name2id(model, G, f"hazard{i}_disc") for i in range(N_HAZARDS)]),
        tip_geom=name2id(model, G, "tip"),
        camera=name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "overhead"),
    )


def show_object(model: mujoco.MjModel, handles: SceneHandles, slot: int, shape: str, rgb: tuple[float, float, float]) -> None:
    """Make ``shape`` the live geom of object ``slot`` (collides, visible, coloured); hide the others."""
    for k, s in enumerate(SHAPES):
        g = handles.obj_geoms[slot, k]
        on = s == shape
        model.geom_contype[g] = model.geom_conaffinity[g] = 1 if on else 0
        model.geom_group[g] = 0 if on else HIDDEN_GROUP
        model.geom_rgba[g] = (*rgb, 1.0) if on else (1.0, 1.0, 1.0, 0.0)


def make_renderer(model: mujoco.MjModel, size: int) -> mujoco.Renderer:
    """A headless ``size`` x ``size`` renderer with shadows, reflections and skybox off (they cost
    several times the frame rate and carry no task information)."""
    r = mujoco.Renderer(model, size, size)
    for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SKYBOX):
        r.scene.flags[flag] = False
    return r
