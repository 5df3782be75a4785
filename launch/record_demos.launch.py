"""Record demonstrations: the simulated robot driven by its expert (as a teleoperated robot
would be) and the recorder writing the configured topics to a rosbag2 (MCAP).

    ros2 launch smiling_ros record_demos.launch.py config:=arm_reach output:=demos episodes:=20

Both nodes end by themselves after `episodes` episodes; if either fails (exits non-zero), the
launch stops the other and exits with code 1.

On a real robot, run only the recorder (ros2 run smiling_ros recorder_node --ros-args -p
config:=my_robot.yaml) while you teleoperate, or use plain `ros2 bag record`.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from smiling_ros.ros.launch_actions import required


def generate_launch_description():
    params = PathJoinSubstitution([FindPackageShare("smiling_ros"), "config", "nodes.yaml"])
    config = LaunchConfiguration("config")
    episodes = LaunchConfiguration("episodes")
    sim = Node(
        package="smiling_ros",
        executable="sim_node",
        name="sim_node",
        output="screen",
        parameters=[params, {
            "config": config,
            "mode": "realtime",
            "expert": LaunchConfiguration("expert"),
            "time_scale": LaunchConfiguration("time_scale"),
            "publish_clock": True,
            "max_episodes": episodes,
            "wait_for_subscribers": 1,
        }],
    )
    recorder = Node(
        package="smiling_ros",
        executable="recorder_node",
        name="recorder_node",
        output="screen",
        parameters=[params, {
            "config": config,
            "output": LaunchConfiguration("output"),
            "storage": LaunchConfiguration("storage"),
            "max_episodes": episodes,
            "use_sim_time": True,
        }],
    )
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="arm_reach", description="task config (name or path)"),
        DeclareLaunchArgument("output", default_value="demos", description="bag directory to create"),
        DeclareLaunchArgument("episodes", default_value="20", description="episodes to record"),
        DeclareLaunchArgument("expert", default_value="scripted", description="'scripted' or a policy checkpoint"),
        DeclareLaunchArgument("time_scale", default_value="1.0", description="simulated s per wall s"),
        DeclareLaunchArgument("storage", default_value="mcap", description="'mcap' or 'sqlite3'"),
        sim,
        recorder,
        required(sim),
        required(recorder),
    ])
