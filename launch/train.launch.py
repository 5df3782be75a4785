"""Train a policy with SMILING from a dataset (made by `smiling-ros import-bag`).

    ros2 launch smiling_ros train.launch.py dataset:=runs/demos_ds out_dir:=runs/smiling
    ros2 launch smiling_ros train.launch.py backend:=ros ...   # RL over topics against sim_node
    ros2 launch smiling_ros train.launch.py dataset:=runs/demos_ds n_envs:=4   # 4 simulator copies

backend 'mujoco' steps the task in-process; backend 'ros' steps a robot over ROS 2 topics (here
the simulated one, started in lockstep mode). The trainer announces each new policy checkpoint
on the policy topic, so a running controller_node picks it up.

The launch ends when training ends (exit code 1 if the trainer or the robot failed). On Ctrl-C
the trainer writes a final checkpoint and exits first; the simulated robot keeps stepping until
the trainer has left (sim_node stop_after), so the trainer's last steps still reach it.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import EqualsSubstitution, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from smiling_ros.ros.launch_actions import required


def generate_launch_description():
    params = PathJoinSubstitution([FindPackageShare("smiling_ros"), "config", "nodes.yaml"])
    config = LaunchConfiguration("config")
    sim = Node(
        package="smiling_ros",
        executable="sim_node",
        name="sim_node",
        output="screen",
        condition=IfCondition(EqualsSubstitution(LaunchConfiguration("backend"), "ros")),
        parameters=[params, {"config": config, "mode": "lockstep", "stop_after": ["trainer_node"]}],
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
            "backend": LaunchConfiguration("backend"),
            "device": LaunchConfiguration("device"),
            "resume": LaunchConfiguration("resume"),
            # Empty means "from the config": passed as a string so YAML never sees ''.
            "n_envs": ParameterValue(LaunchConfiguration("n_envs"), value_type=str),
        }],
    )
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="arm_reach", description="task config (name or path)"),
        DeclareLaunchArgument("dataset", description="dataset directory (smiling-ros import-bag)"),
        DeclareLaunchArgument("out_dir", default_value="runs/smiling", description="run directory"),
        DeclareLaunchArgument("steps", default_value="20000", description="environment steps"),
        DeclareLaunchArgument("backend", default_value="mujoco", description="'mujoco' or 'ros'"),
        DeclareLaunchArgument("device", default_value="auto", description="'auto', 'cpu' or 'cuda'"),
        DeclareLaunchArgument("resume", default_value="false", description="continue from out_dir"),
        DeclareLaunchArgument("n_envs", default_value="",
                              description="backend 'mujoco': simulator copies; empty: the config's smiling.n_envs"),
        sim,
        trainer,
        required(sim),
        required(trainer, shutdown_on_success=True),
    ])
