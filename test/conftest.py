"""Test environment: loopback-only DDS, a ROS domain of this test process's own, and every
process a test starts reaped when the test ends, whether it passed or not."""
import ctypes
import functools
import os
import signal
import sys
from pathlib import Path

import pytest

from smiling_ros.ros.dds_env import LEGACY, local_dds

os.environ.update(local_dds())
for _name in set(LEGACY) - set(local_dds()):
    os.environ.pop(_name, None)  # deprecated where the discovery range exists: every node would warn
# A domain per test process (0..100 are left to users; 101..230 here), so parallel runs don't cross-talk.
os.environ["ROS_DOMAIN_ID"] = str(101 + os.getpid() % 130)
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("MUJOCO_GL", "disable")

import psutil  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Orphans of the processes tests start (a node whose parent CLI was killed) become children of
# this process instead of init, so the reaper below finds them too.
if sys.platform.startswith("linux"):
    PR_SET_CHILD_SUBREAPER = 36
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _descendants() -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


def reap(procs, grace_s: float = 5.0) -> list[str]:
    """Stop processes as launch does (SIGINT, then SIGTERM, then SIGKILL) and wait for them."""
    names = []
    for p in procs:
        try:
            names.append(f"{p.pid} {' '.join(p.cmdline()[:4])}")
            p.send_signal(signal.SIGINT)
        except psutil.Error:
            pass
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 3.0), (None, 3.0)):
        _, alive = psutil.wait_procs(procs, timeout=wait)
        if not alive or sig is None:
            break
        for p in alive:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
    return names


@pytest.fixture(autouse=True, scope="module")
def _reap_module_processes():
    before = set(_descendants())
    yield
    reap([p for pid, p in _descendants().items() if pid not in before])


@pytest.fixture(autouse=True)
def _reap_test_processes(request):
    """Processes a test (or its function-scoped fixtures) left running are stopped at teardown,
    so a failed assertion never leaves nodes on the DDS domain of the next test."""
    before = set(_descendants())
    yield
    left = reap([p for pid, p in _descendants().items() if pid not in before])
    if left:
        request.node.add_report_section("teardown", "reaped", "\n".join(left))


@functools.lru_cache(maxsize=None)
def ros_available() -> bool:
    try:
        import rclpy  # noqa: F401
        import std_msgs.msg  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def pytest_collection_modifyitems(config, items):
    """Tests marked ``ros`` are skipped, saying why, where rclpy is not installed."""
    if ros_available():
        return
    skip = pytest.mark.skip(reason="rclpy wheels / ROS 2 not installed")
    for item in items:
        if item.get_closest_marker("ros") is not None:
            item.add_marker(skip)


@pytest.fixture
def ros_env():
    """Environment for child ROS processes started by a test (same domain, loopback DDS)."""
    from smiling_ros.ros.dds_env import child_env

    return child_env()


# Marks a test (or, as pytestmark, a file) as needing rclpy and DDS: `-m ros` selects these tests,
# `-m "not ros"` leaves them out, and they are skipped where rclpy is missing.
requires_ros = pytest.mark.ros
