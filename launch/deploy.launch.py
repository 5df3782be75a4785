"""Deploy a policy: controller_node (a lifecycle node) publishing refined actions on the
ros2_control command topic at control rate, configured and activated by this launch file.

    ros2 launch smiling_ros deploy.launch.py checkpoint:=runs/demo/bridger.safetensors
    ros2 launch smiling_ros deploy.launch.py checkpoint:=... sim:=false config:=my_robot.yaml

With sim:=true (default) the simulated robot runs in real time beside it; on a real robot set
sim:=false and point config at the robot's task file (topics, fields, limits).

Launch arguments left empty are unset: the robot config decides. config/nodes.yaml has no
controller_node entry, and the controller's safety settings (stop_action, watchdog_periods,
rate limits, ...) are read from the robot config only.

If the controller fails to configure (e.g. a checkpoint for another robot) or a node exits with
a non-zero code, the launch stops and exits with code 1.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue
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
            # Empty means "from the config / checkpoint": passed as a string so YAML never sees ''.
            "control_rate_hz": ParameterValue(LaunchConfiguration("control_rate_hz"), value_type=str),
            "steps": ParameterValue(LaunchConfiguration("steps"), value_type=str),
            "command_topic": LaunchConfiguration("command_topic"),
            "autostart": False,
        }],
    )
    sim = Node(
        package="smiling_ros",
        executable="sim_node",
        name="sim_node",
        output="screen",
        condition=IfCondition(LaunchConfiguration("sim")),
        parameters=[params, {"config": config, "mode": "realtime",
                             "command_topic": LaunchConfiguration("command_topic")}],
    )
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="arm_reach", description="task/robot config (name or path)"),
        DeclareLaunchArgument("checkpoint", description="policy checkpoint (.safetensors)"),
        DeclareLaunchArgument("control_rate_hz", default_value="", description="control rate [Hz]; empty: from the config"),
        DeclareLaunchArgument("steps", default_value="", description="BRIDGER sampling steps; empty: from the checkpoint"),
        DeclareLaunchArgument("command_topic", default_value="",
                              description="ros2_control command topic; empty: from the config"),
        DeclareLaunchArgument("sim", default_value="true", description="also run the simulated robot"),
        sim,
        required(sim),
        required(controller),
        *lifecycle_bringup(controller, "controller_node"),
    ])
