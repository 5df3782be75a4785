"""Test environment: loopback-only DDS and a ROS domain of this test process's own."""
import os
import sys
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOCALHOST_ONLY"] = "1"
# A domain per test process (0..100 are left to users; 101..230 here), so parallel runs don't cross-talk.
os.environ["ROS_DOMAIN_ID"] = str(101 + os.getpid() % 130)
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("MUJOCO_GL", "disable")

import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def ros_available() -> bool:
    try:
        import rclpy  # noqa: F401
        import std_msgs.msg  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.fixture
def ros_env():
    """Environment for child ROS processes started by a test (same domain, loopback DDS)."""
    from smiling_ros.ros.dds_env import child_env

    return child_env()


requires_ros = pytest.mark.skipif(not ros_available(), reason="rclpy wheels / ROS 2 not installed")
