"""Embodiments of the tabletop suite, registered by name with :func:`register_embodiment`.

Every embodiment ends in a fingertip at object height (the end effector, site ``ee``) and
accepts the common action: an end-effector velocity command in [-1, 1]^2 that is scaled to
``max_speed`` m/s. Arms track it with a Cartesian velocity servo on the fingertip site (a
site-transmission actuator: torques = J^T f, recomputed by MuJoCo at every physics step, so
the Jacobian controller costs no Python time); joint-level control (``control="joint"``)
swaps in joint velocity servos.
Links of the arms fly above the objects: only the fingertip touches them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import mujoco
import numpy as np

from embodied.specs import MAX_JOINTS

from embodied.registry import Registry

OBJECT_Z = 0.025
"""Height (m) of object centres and of the fingertip centre above the table."""
TIP_RADIUS = 0.02
ARM_Z = 0.08
"""Height (m) of the arm links: above every object, so links never touch them."""

EMBODIMENTS: Registry[type["Embodiment"]] = Registry("embodiment")
register_embodiment = EMBODIMENTS.register
"""Class decorator: ``@register_embodiment("name")`` adds an :class:`Embodiment` subclass."""


class Embodiment(ABC):
    """A robot that adds itself to a scene spec and maps actions to actuator controls.

    Life cycle: :meth:`build` on the :class:`mujoco.MjSpec`, compile, then :meth:`bind` to the
    compiled model; the env then calls :meth:`reset`, :meth:`set_action` and the readers.
    """

    name: ClassVar[str]
    n_joints: ClassVar[int]
    reach: ClassVar[float]
    """Radius (m) of the disc around the origin that the fingertip can reach."""
    max_speed: float = 0.4
    """End-effector speed (m/s) commanded by an action of norm 1 per axis."""

    def __init__(self) -> None:
        self.model: mujoco.MjModel | None = None

    @abstractmethod
    def build(self, spec: mujoco.MjSpec, control: str) -> None:
        """Add bodies, joints, the site ``ee`` and the actuators of ``control`` (ee or joint)."""

    def bind(self, model: mujoco.MjModel) -> None:
        """Cache ids and addresses in the compiled model."""
        self.model = model
        self.ee_site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "ee")
        joints = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, f"robot_j{i}") for i in range(self.dof)]
        self.qpos_adr = np.array([model.jnt_qposadr[j] for j in joints])
        self.dof_adr = np.array([model.jnt_dofadr[j] for j in joints])
        self.act_ids = np.array([i for i in range(model.nu) if model.actuator(i).name.startswith("robot_a")])
        self._jacp = np.zeros((3, model.nv))

    @property
    def dof(self) -> int:
        """Number of actuated joints (2 for the point mass: its two slides)."""
        return max(self.n_joints, 2)

    @abstractmethod
    def reset(self, data: mujoco.MjData, rng: np.random.Generator) -> None:
        """Put the robot in a random start configuration (qpos, zero qvel)."""

    def ee_pos(self, data: mujoco.MjData) -> np.ndarray:
        """Fingertip (x, y) in metres."""
        return data.site_xpos[self.ee_site, :2]

    def ee_jacobian(self, data: mujoco.MjData) -> np.ndarray:
        """(2, dof) Jacobian of the fingertip's (x, y) w.r.t. the robot's joint velocities."""
        mujoco.mj_jacSite(self.model, data, self._jacp, None, self.ee_site)
        return self._jacp[:2, self.dof_adr]

    def ee_vel(self, data: mujoco.MjData) -> np.ndarray:
        """Fingertip velocity (vx, vy) in m/s."""
        return self.ee_jacobian(data) @ data.qvel[self.dof_adr]

    def joint_features(self, data: mujoco.MjData, out: np.ndarray) -> None:
        """Write cos, sin, vel and mask of the hinge joints (zero-padded) into ``out`` (4*MAX_JOINTS,)."""
        out[:] = 0.0

    def joint_velocity_for(self, data: mujoco.MjData, ee_velocity: np.ndarray) -> np.ndarray:
        """Joint velocities (dof,) that move the fingertip at ``ee_velocity`` (m/s), damped least squares."""
        J = self.ee_jacobian(data)
        lam2 = 1e-3
        return J.T @ np.linalg.solve(J @ J.T + lam2 * np.eye(2), ee_velocity)

    def set_action(self, data: mujoco.MjData, action: np.ndarray, control: str) -> None:
        """Write actuator controls for an action in [-1, 1]^k (``ee``: k=2; ``joint``: k=dof)."""
        data.ctrl[self.act_ids] = action * (self.max_joint_speed if control == "joint" else self.max_speed)

    max_joint_speed: float = 4.0
    """Joint speed (rad/s, m/s for slides) commanded by a joint action of 1."""


@register_embodiment("point")
class PointMass(Embodiment):
    """A 2-DoF point-mass pusher: a 2 cm sphere on two velocity-controlled slides."""

    n_joints = 0
    reach = 0.40
    max_joint_speed = 0.4

    def build(self, spec: mujoco.MjSpec, control: str) -> None:
        body = spec.worldbody.add_body(name="robot", pos=[0, 0, OBJECT_Z])
        for i, axis in enumerate(([1, 0, 0], [0, 1, 0])):
            body.add_joint(
                name=f"robot_j{i}", type=mujoco.mjtJoint.mjJNT_SLIDE, axis=axis, damping=0.5, armature=0.01
            )
        body.add_geom(
            name="tip", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[TIP_RADIUS, 0, 0], mass=0.5,
            rgba=[0.2, 0.2, 0.2, 1], friction=[0.3, 0.005, 0.0001],
        )
        body.add_site(name="ee", pos=[0, 0, 0], size=[0.005, 0, 0])
        for i in range(2):
            _velocity_actuator(spec, f"robot_a{i}", f"robot_j{i}", kv=25.0, force=15.0, speed=self.max_joint_speed)

    def reset(self, data: mujoco.MjData, rng: np.random.Generator) -> None:
        r, th = rng.uniform(0.05, 0.3), rng.uniform(-np.pi, np.pi)
        data.qpos[self.qpos_adr] = [r * np.cos(th), r * np.sin(th)]
        data.qvel[self.dof_adr] = 0.0

    def ee_jacobian(self, data: mujoco.MjData) -> np.ndarray:
        return np.eye(2)

    def ee_vel(self, data: mujoco.MjData) -> np.ndarray:
        return data.qvel[self.dof_adr]

    def joint_velocity_for(self, data: mujoco.MjData, ee_velocity: np.ndarray) -> np.ndarray:
        return np.asarray(ee_velocity, dtype=np.float64)


class PlanarArm(Embodiment):
    """An n-link planar arm on hinge joints about z, its base at the table centre."""

    links: ClassVar[tuple[float, ...]]

    @property
    def n_joints(self) -> int:  # type: ignore[override]
        return len(self.links)

    def build(self, spec: mujoco.MjSpec, control: str) -> None:
        base = spec.worldbody.add_body(name="robot_base", pos=[0, 0, ARM_Z])
        base.add_geom(
            type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[0.03, 0.01, 0], pos=[0, 0, 0.0],
            rgba=[0.3, 0.3, 0.35, 1], contype=0, conaffinity=0, mass=0.5,
        )
        parent, x = base, 0.0
        for i, length in enumerate(self.links):
            link = parent.add_body(name=f"robot_link{i}", pos=[x, 0, 0])
            link.add_joint(
                name=f"robot_j{i}", type=mujoco.mjtJoint.mjJNT_HINGE, axis=[0, 0, 1], damping=0.02, armature=0.002
            )
            link.add_geom(
                type=mujoco.mjtGeom.mjGEOM_CAPSULE, fromto=[0, 0, 0, length, 0, 0], size=[0.012, 0, 0],
                rgba=[0.55, 0.55, 0.6, 1], contype=0, conaffinity=0, mass=0.1,
            )
            parent, x = link, length
        tip = parent.add_body(name="robot_tip", pos=[x, 0, 0])
        drop = ARM_Z - OBJECT_Z
        tip.add_geom(
            type=mujoco.mjtGeom.mjGEOM_CAPSULE, fromto=[0, 0, 0, 0, 0, -drop], size=[0.008, 0, 0],
            rgba=[0.4, 0.4, 0.45, 1], contype=0, conaffinity=0, mass=0.02,
        )
        tip.add_geom(
            name="tip", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[TIP_RADIUS, 0, 0], pos=[0, 0, -drop],
            rgba=[0.2, 0.2, 0.2, 1], mass=0.05, friction=[0.3, 0.005, 0.0001],
        )
        tip.add_site(name="ee", pos=[0, 0, -drop], size=[0.005, 0, 0])
        if control == "joint":
            for i in range(self.n_joints):
                _velocity_actuator(spec, f"robot_a{i}", f"robot_j{i}", kv=2.0, force=6.0, speed=self.max_joint_speed)
            return
        spec.worldbody.add_site(name="robot_origin", pos=[0, 0, OBJECT_Z], size=[0.001, 0, 0], group=5)
        for i in range(2):
            gear = [0.0] * 6
            gear[i] = 1.0
            _velocity_actuator(
                spec, f"robot_a{i}", "ee", kv=30.0, force=20.0, speed=self.max_speed,
                trn=mujoco.mjtTrn.mjTRN_SITE, refsite="robot_origin", gear=gear,
            )

    def reset(self, data: mujoco.MjData, rng: np.random.Generator) -> None:
        n = self.n_joints
        q = rng.uniform(-np.pi, np.pi, size=n)
        q[1:] = rng.uniform(0.6, 2.2, size=n - 1) * rng.choice([-1.0, 1.0])  # bent, never straight
        data.qpos[self.qpos_adr] = q
        data.qvel[self.dof_adr] = 0.0

    def joint_features(self, data: mujoco.MjData, out: np.ndarray) -> None:
        n, m = self.n_joints, MAX_JOINTS
        q = data.qpos[self.qpos_adr]
        out[:] = 0.0
        out[0:n] = np.cos(q)
        out[m : m + n] = np.sin(q)
        out[2 * m : 2 * m + n] = data.qvel[self.dof_adr]
        out[3 * m : 3 * m + n] = 1.0


@register_embodiment("arm2")
class TwoLinkArm(PlanarArm):
    """2-link planar arm (links 0.20 m and 0.18 m); a training embodiment."""

    links = (0.20, 0.18)
    reach = 0.38


@register_embodiment("arm3")
class ThreeLinkArm(PlanarArm):
    """3-link planar arm (0.14, 0.13, 0.11 m); kept for held-out embodiment tests."""

    links = (0.14, 0.13, 0.11)
    reach = 0.38


def _velocity_actuator(
    spec: mujoco.MjSpec,
    name: str,
    target: str,
    kv: float,
    force: float,
    speed: float,
    trn: mujoco.mjtTrn = mujoco.mjtTrn.mjTRN_JOINT,
    refsite: str = "",
    gear: list[float] | None = None,
) -> None:
    """A velocity servo: force = kv * (ctrl - velocity), ctrl in [-speed, speed], force clipped.

    ``trn=mjTRN_SITE`` with a ``refsite`` makes it a Cartesian servo on a site along ``gear``.
    """
    act = spec.add_actuator(name=name, target=target, trntype=trn)
    if refsite:
        act.refsite = refsite
    if gear is not None:
        act.gear = gear
    act.gaintype = mujoco.mjtGain.mjGAIN_FIXED
    act.biastype = mujoco.mjtBias.mjBIAS_AFFINE
    gain = np.zeros(len(act.gainprm))
    gain[0] = kv
    bias = np.zeros(len(act.biasprm))
    bias[2] = -kv
    act.gainprm = gain
    act.biasprm = bias
    act.ctrlrange = [-speed, speed]
    act.forcerange = [-force, force]
    act.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
    act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE


def make_embodiment(name: str) -> Embodiment:
    """A fresh instance of the embodiment registered as ``name``."""
    return EMBODIMENTS[name]()
