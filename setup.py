"""smiling_ros: an ament_python package that also installs with plain pip."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "smiling_ros"

NODES = ["sim_node", "recorder_node", "trainer_node", "controller_node"]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Robot demonstrations from ROS 2 topics to a deployed diffusion policy "
    "(SMILING, BRIDGER, DBC, DyDiff).",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/sim", glob("sim/*.xml") + glob("sim/*.npz")),
        (f"share/{PACKAGE}/sim/experts", glob("sim/experts/*.safetensors") + glob("sim/experts/*.json")
         + glob("sim/experts/README*")),
    ],
    install_requires=[
        "numpy>=1.24",
        "pyyaml>=6",
        "torch>=2.2",
        "mujoco>=3.1",
        "gymnasium[mujoco]>=1.0",
        "stable-baselines3>=2.3",
        "safetensors>=0.4",
        "rosbags>=0.11",  # storage readers open bare .mcap/.db3 files (adapters/bag.py)
        "transforms3d>=0.4",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "pyarrow>=14",  # LeRobot v3 datasets (parquet): export-lerobot / import-lerobot
    ],
    extras_require={
        # ROS 2 client library and messages as wheels, for installs without a ROS 2 distro.
        # In a sourced ROS 2 install these come from the distro: do not install this extra.
        "ros": [
            "ros-rclpy",
            "ros-rmw-fastrtps-cpp",
            "ros-std-msgs",
            "ros-std-srvs",
            "ros-sensor-msgs",
            "ros-geometry-msgs",
            "ros-trajectory-msgs",  # JointTrajectory for joint_trajectory_controller (control_msgs has no wheel)
            "ros-diagnostic-msgs",
            "ros-lifecycle-msgs",
        ],
        # The same for ROS 2 Jazzy (rclpy 7.x); install one of "ros" and "jazzy", never both.
        "jazzy": [
            "ros-jazzy-rclpy",
            "ros-jazzy-rmw-fastrtps-cpp",
            "ros-jazzy-std-msgs",
            "ros-jazzy-std-srvs",
            "ros-jazzy-sensor-msgs",
            "ros-jazzy-geometry-msgs",
            "ros-jazzy-trajectory-msgs",
            "ros-jazzy-diagnostic-msgs",
            "ros-jazzy-lifecycle-msgs",
            "ros-jazzy-rosgraph-msgs",
        ],
        # pytest < 8.4: launch_pytest and launch_testing (the ROS 2 launch test frameworks, Jazzy
        # branches) use fixture and hook internals that pytest 8.4 changed.
        "test": ["pytest>=7,<8.4", "hypothesis>=6", "psutil>=5.9", "colcon-common-extensions", "colcon-ros", "ruff>=0.5", "mypy>=1.8"],
    },
    entry_points={
        "console_scripts": [f"smiling-ros = {PACKAGE}.cli:main"]
        + [f"{n} = {PACKAGE}.nodes.{n}:main" for n in NODES],
    },
)
