"""Live demo on ROS 2: the simulated robot in real time, the trainer learning with SMILING from a
dataset, and the controller deploying each policy the trainer announces (hot swap) — watch
/diagnostics and the robot improve while it trains.

    smiling-ros record-demos --config arm_reach --episodes 20 --out demos
    smiling-ros import-bag demos --config arm_reach --out demos_ds
    ros2 launch smiling_ros demo.launch.py dataset:=demos_ds checkpoint:=<any initial policy>

The one-command, ROS-install-free version of the whole pipeline is `smiling-ros demo`.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from smiling_ros.ros.launch_actions import lifecycle_bringup, required


def generate_launch_description():
    params = PathJoinSubstitution([FindPackageShare("smiling_ros"), "config", "nodes.yaml"])
    config = LaunchConfiguration("config")
    controller = LifecycleNode(
        package="smiling_ros",
        executable="controller_node",
        name="controller_node",
        namespace="",
        output="screen",
        parameters=[params, {
            "config": config,
            "checkpoint": LaunchConfiguration("checkpoint"),
            "follow_announcements": True,
            "autostart": False,
        }],
    )
    sim = Node(
        package="smiling_ros",
        executable="sim_node",
        name="sim_node",
        output="screen",
        parameters=[params, {"config": config, "mode": "realtime"}],
    )
    trainer = Node(
        package="smiling_ros",
        executable="trainer_node",
        name="trainer_node",
        output="screen",
        parameters=[params, {
            "config": config,
            "dataset": LaunchConfiguration("dataset"),
            "out_dir": LaunchConfiguration("out_dir"),
            "steps": LaunchConfiguration("steps"),
            "backend": "mujoco",
        }],
    )
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="arm_reach", description="task config (name or path)"),
        DeclareLaunchArgument("dataset", description="dataset directory (smiling-ros import-bag)"),
        DeclareLaunchArgument("checkpoint", description="initial policy for the controller"),
        DeclareLaunchArgument("out_dir", default_value="runs/demo_live", description="trainer run directory"),
        DeclareLaunchArgument("steps", default_value="20000", description="trainer environment steps"),
        sim,
        trainer,
        required(sim),
        required(trainer),
        required(controller),
        *lifecycle_bringup(controller, "controller_node"),
    ])
