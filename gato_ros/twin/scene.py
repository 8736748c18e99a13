"""Build the twin's MuJoCo model with `mujoco.MjSpec`: cell, basket, Sawyer + gripper, RGB objects, cameras.

Collision filtering is what makes the twin fast: three contype/conaffinity classes (static cell, objects,
robot) so that the robot never collides with itself (it cannot within the workspace) and the cell never
collides with itself; robot links collide through fitted primitives, not their visual meshes.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np
from omegaconf import DictConfig

from gato_ros.calibration.calibration_file import load_cell_calibration
from gato_ros.control.arm_model import (
    ARM_JOINTS,
    GRIPPER_DRIVER_JOINTS,
    GRIPPER_PREFIX,
    WRIST_SENSOR_PREFIX,
    build_arm_spec,
)
from gato_ros.twin.arena import GROUND_GEOM, add_arena
from gato_ros.twin.assets import COLORS, mesh_path
from gato_ros.twin.basket import FLOOR_GEOM, add_basket

# contype/conaffinity bits: static cell, free objects, robot.
STATIC, OBJECT, ROBOT = 1, 2, 4
VISUAL_GROUP, COLLISION_GROUP = 1, 3  # group 3 is hidden by default in renders
# Visual geoms the policy cameras never see (robot base, head, first link): the twin's renderer skips
# this group, which saves a third of the triangles a frame costs.
OUT_OF_VIEW_GROUP = 2
ARM_ROOT_BODY = "arm_base_link"
SUPPORT_GEOMS = (GROUND_GEOM, FLOOR_GEOM)
# Sawyer links near the basket: they collide through capsules fitted to their meshes.
ARM_COLLISION_LINKS = ("l3", "l4", "l5", "l6")
# Gripper parts that collide, through primitives fitted to their meshes: the finger pads as boxes (flat
# contact faces hold objects stably), the base and the wrist sensor as capsules.
GRIPPER_PADS = ("left_pad", "right_pad")
FITTED_GRIPPER_PARTS = {
    GRIPPER_PREFIX + "left_pad": mujoco.mjtGeom.mjGEOM_BOX,
    GRIPPER_PREFIX + "right_pad": mujoco.mjtGeom.mjGEOM_BOX,
    GRIPPER_PREFIX + "base": mujoco.mjtGeom.mjGEOM_CAPSULE,
    WRIST_SENSOR_PREFIX + "fts300_body": mujoco.mjtGeom.mjGEOM_CAPSULE,
}


@dataclass(frozen=True)
class SceneIndex:
    """Ids resolved once after compiling, so stepping and observing never look names up."""

    arm_qpos: np.ndarray
    arm_dof: np.ndarray
    arm_actuators: np.ndarray
    gripper_actuator: int
    gripper_driver_qpos: int
    gripper_driver_dof: int
    object_bodies: tuple[int, int, int]  # red, green, blue
    object_qpos: tuple[int, int, int]
    object_dof: tuple[int, int, int]
    object_geoms: tuple[frozenset[int], frozenset[int], frozenset[int]]
    support_geoms: frozenset[int]
    robot_geoms: frozenset[int]
    cameras: dict[str, int]

    @classmethod
    def resolve(cls, model: mujoco.MjModel) -> SceneIndex:
        arm_joints = [model.joint(name) for name in ARM_JOINTS]
        bodies = tuple(model.body(color).id for color in COLORS)
        freejoints = [model.body_jntadr[b] for b in bodies]
        robot_root = model.body(ARM_ROOT_BODY).id
        geom_body = model.geom_bodyid
        return cls(
            arm_qpos=np.array([j.qposadr[0] for j in arm_joints]),
            arm_dof=np.array([j.dofadr[0] for j in arm_joints]),
            arm_actuators=np.array([model.actuator(f"sawyer/{name}").id for name in ARM_JOINTS]),
            gripper_actuator=model.actuator(GRIPPER_PREFIX + "fingers_actuator").id,
            gripper_driver_qpos=int(model.joint(GRIPPER_DRIVER_JOINTS[0]).qposadr[0]),
            gripper_driver_dof=int(model.joint(GRIPPER_DRIVER_JOINTS[0]).dofadr[0]),
            object_bodies=bodies,  # type: ignore[arg-type]
            object_qpos=tuple(int(model.jnt_qposadr[j]) for j in freejoints),  # type: ignore[arg-type]
            object_dof=tuple(int(model.jnt_dofadr[j]) for j in freejoints),  # type: ignore[arg-type]
            object_geoms=tuple(  # type: ignore[arg-type]
                frozenset(np.flatnonzero(geom_body == b).tolist()) for b in bodies
            ),
            support_geoms=frozenset(model.geom(name).id for name in SUPPORT_GEOMS),
            robot_geoms=frozenset(np.flatnonzero(model.body_rootid[geom_body] == robot_root).tolist()),
            cameras={model.camera(i).name: i for i in range(model.ncam)},
        )


def body_vertices(model: mujoco.MjModel, body: int) -> np.ndarray:
    """Vertices of a body's mesh geoms expressed in the body frame (object geometry for the expert/resets)."""
    parts = []
    for geom in np.flatnonzero(model.geom_bodyid == body):
        mesh = model.geom_dataid[geom]
        if model.geom_type[geom] != mujoco.mjtGeom.mjGEOM_MESH or mesh < 0:
            continue
        start, count = model.mesh_vertadr[mesh], model.mesh_vertnum[mesh]
        rotation = np.empty(9)
        mujoco.mju_quat2Mat(rotation, model.geom_quat[geom])
        parts.append(model.mesh_vert[start : start + count] @ rotation.reshape(3, 3).T + model.geom_pos[geom])
    return np.vstack(parts)


def posed_vertices(vertices: np.ndarray, position: np.ndarray, quat_wxyz: np.ndarray) -> np.ndarray:
    """Body-frame vertices (N, 3) placed at a world pose (position, quaternion w, x, y, z)."""
    rotation = np.empty(9)
    mujoco.mju_quat2Mat(rotation, np.asarray(quat_wxyz, dtype=np.float64))
    return vertices @ rotation.reshape(3, 3).T + np.asarray(position, dtype=np.float64)


def _set_collision(geom: mujoco.MjsGeom, contype: int, conaffinity: int) -> None:
    geom.contype, geom.conaffinity = contype, conaffinity


def set_contact(geom: mujoco.MjsGeom, contact: DictConfig) -> None:
    """Friction, condim, solref and solimp of a geom, all four explicitly (no inherited defaults)."""
    geom.friction = [float(v) for v in contact.friction]
    geom.condim = int(contact.condim)
    geom.solref = [float(v) for v in contact.solref]
    geom.solimp = [float(v) for v in contact.solimp]


def _configure_robot(spec: mujoco.MjSpec, cfg: DictConfig) -> None:
    """Dynamics, actuators, gravity compensation and collision geometry of the arm and gripper."""
    twin, robot = cfg.twin, cfg.robot
    dynamics = twin.arm_joint_dynamics
    for i, name in enumerate(ARM_JOINTS):
        joint = spec.joint(name)
        joint.armature = float(dynamics.armature[i])
        joint.damping = float(dynamics.damping[i])
        joint.frictionloss = float(dynamics.frictionloss[i])
        joint.range = [float(robot.joint_min[i]), float(robot.joint_max[i])]
        joint.limited = mujoco.mjtLimited.mjLIMITED_TRUE
        # Integrated velocity: ctrl is a joint velocity, act its integral (the position target, kept
        # within the joint limits), force = kp (act - q) - kv qdot, limited to the joint's torque.
        actuator = spec.add_actuator(name=f"sawyer/{name}", target=name)
        actuator.trntype = mujoco.mjtTrn.mjTRN_JOINT
        actuator.dyntype = mujoco.mjtDyn.mjDYN_INTEGRATOR
        actuator.gaintype = mujoco.mjtGain.mjGAIN_FIXED
        actuator.biastype = mujoco.mjtBias.mjBIAS_AFFINE
        actuator.gainprm[0] = float(robot.position_kp)
        actuator.biasprm[:3] = [0.0, -float(robot.position_kp), -float(robot.position_kv)]
        actuator.ctrllimited = actuator.forcelimited = actuator.actlimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuator.ctrlrange = [-float(robot.velocity_limit[i]), float(robot.velocity_limit[i])]
        actuator.forcerange = [-float(robot.torque_limit[i]), float(robot.torque_limit[i])]
        actuator.actrange = [float(robot.joint_min[i]), float(robot.joint_max[i])]

    gripper = twin.gripper
    fingers = spec.actuator(GRIPPER_PREFIX + "fingers_actuator")
    command = [float(v) for v in robot.gripper.command_range]
    fingers.dyntype = mujoco.mjtDyn.mjDYN_INTEGRATOR
    fingers.ctrlrange = command
    fingers.actlimited = mujoco.mjtLimited.mjLIMITED_TRUE
    fingers.actrange = [0.0, command[1]]
    fingers.gainprm[:3] = [float(gripper.command_gain), 0.0, 0.0]
    fingers.biasprm[:3] = [0.0, -float(gripper.position_kp), 0.0]
    fingers.forcerange = [-float(gripper.force_limit), float(gripper.force_limit)]
    for name in GRIPPER_DRIVER_JOINTS:
        spec.joint(name).armature = float(gripper.driver_armature)
        spec.joint(name).damping = float(gripper.driver_damping)
    for side in ("left", "right"):
        spec.joint(f"{GRIPPER_PREFIX}{side}_spring_link_joint").stiffness = float(
            gripper.spring_link_stiffness
        )

    root = spec.body(ARM_ROOT_BODY)
    gravity_compensation = 1.0 if twin.physics.gravity_compensation else 0.0
    pads = {GRIPPER_PREFIX + part for part in GRIPPER_PADS}
    fitted = {**{link: mujoco.mjtGeom.mjGEOM_CAPSULE for link in ARM_COLLISION_LINKS}, **FITTED_GRIPPER_PARTS}
    simplified = {str(name): str(kind) for name, kind in twin.visual_primitives.items()}
    out_of_view = {str(name) for name in twin.rendering.out_of_view_geoms}
    for body in [root, *root.find_all(mujoco.mjtObj.mjOBJ_BODY)]:
        body.gravcomp = gravity_compensation
        for geom in body.geoms:  # every mesh is visual only; collisions go through fitted primitives
            _set_collision(geom, 0, 0)
            geom.group = VISUAL_GROUP
            if geom.name in simplified:  # a primitive fitted to a very dense mesh renders ~free
                geom.type = getattr(mujoco.mjtGeom, f"mjGEOM_{simplified[geom.name].upper()}")
            if geom.name in out_of_view:
                geom.group = OUT_OF_VIEW_GROUP
        if body.name in fitted:
            mesh_geom = body.first_geom()
            collider = body.add_geom(
                name=f"{body.name}_collision",
                type=fitted[body.name],
                meshname=mesh_geom.meshname,
                pos=list(mesh_geom.pos),
                quat=list(mesh_geom.quat),
                group=COLLISION_GROUP,
            )
            collider.mass = 0.0
            _set_collision(collider, ROBOT, STATIC)
            if body.name in pads:
                set_contact(collider, gripper.pad_contact)


def _add_objects(spec: mujoco.MjSpec, cfg: DictConfig, object_ids: tuple[str, str, str]) -> None:
    twin = cfg.twin
    for color, object_id in zip(COLORS, object_ids, strict=True):
        spec.add_mesh(name=f"{color}_mesh", file=str(mesh_path(object_id)))
        body = spec.worldbody.add_body(name=color, pos=[0.0, 0.0, 0.0])
        body.add_freejoint(name=f"{color}/free")
        geom = body.add_geom(
            name=f"{color}/{object_id}",
            type=mujoco.mjtGeom.mjGEOM_MESH,
            meshname=f"{color}_mesh",
            rgba=[float(v) for v in twin.object_colors[color]],
        )
        geom.mass = float(twin.object_mass)
        set_contact(geom, twin.object_contact)
        geom.margin = geom.gap = float(twin.object_contact.report_distance)
        _set_collision(geom, OBJECT, STATIC | OBJECT | ROBOT)


def _add_cameras(spec: mujoco.MjSpec, cfg: DictConfig) -> None:
    calibration = load_cell_calibration(cfg.cameras)
    for name, camera in calibration["cameras"].items():
        spec.worldbody.add_camera(
            name=name,
            pos=[float(v) for v in camera["position"]],
            quat=[float(v) for v in camera["quaternion_wxyz"]],
            fovy=float(camera["fovy_deg"]),
        )


def _set_physics(spec: mujoco.MjSpec, physics: DictConfig) -> None:
    option = spec.option
    option.timestep = float(physics.timestep)
    option.integrator = getattr(mujoco.mjtIntegrator, f"mjINT_{str(physics.integrator).upper()}")
    option.solver = getattr(mujoco.mjtSolver, f"mjSOL_{str(physics.solver).upper()}")
    option.cone = getattr(mujoco.mjtCone, f"mjCONE_{str(physics.cone).upper()}")
    option.iterations = int(physics.iterations)
    option.ls_iterations = int(physics.ls_iterations)
    option.tolerance = float(physics.tolerance)
    option.impratio = float(physics.impratio)
    option.noslip_iterations = int(physics.noslip_iterations)
    option.noslip_tolerance = float(physics.noslip_tolerance)
    if physics.multiccd:  # several contact points per convex mesh pair: flat faces rest stably
        option.enableflags |= mujoco.mjtEnableBit.mjENBL_MULTICCD
    if not physics.sensors:  # the wheel's F/T and joint-torque sensors; nothing in the twin reads them
        option.disableflags |= mujoco.mjtDisableBit.mjDSBL_SENSOR
    if physics.islands:  # solve independent bodies apart: resting objects do not inherit arm residuals
        option.enableflags |= mujoco.mjtEnableBit.mjENBL_ISLAND


def build_scene_spec(cfg: DictConfig, object_ids: tuple[str, str, str]) -> mujoco.MjSpec:
    """The full cell as an MjSpec (not yet compiled); `object_ids` = (red, green, blue) dataset ids."""
    spec = build_arm_spec()
    spec.modelname = "rgb_stacking_twin"
    spec.compiler.fitaabb = True  # fitted collision primitives enclose their meshes
    _set_physics(spec, cfg.twin.physics)
    spec.visual.global_.offwidth = int(cfg.cameras.width)
    spec.visual.global_.offheight = int(cfg.cameras.height)
    spec.visual.quality.offsamples = int(cfg.twin.rendering.multisamples)
    ground = add_arena(spec, shadows=bool(cfg.twin.rendering.shadows))  # contact parameters from the wheel
    _set_collision(ground, STATIC, 0)
    for geom in add_basket(spec, cfg.twin, (STATIC, 0), visual_group=0, collision_group=COLLISION_GROUP):
        set_contact(geom, cfg.twin.basket_contact)
    _configure_robot(spec, cfg)
    _add_objects(spec, cfg, object_ids)
    _add_cameras(spec, cfg)
    return spec


def build_scene(cfg: DictConfig, object_ids: tuple[str, str, str]) -> tuple[mujoco.MjModel, SceneIndex]:
    model = build_scene_spec(cfg, object_ids).compile()
    return model, SceneIndex.resolve(model)
