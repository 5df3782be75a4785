"""Environment for ROS 2 processes the project starts itself (demo, record-demos, tests).

DDS stays on the loopback interface unless the user has chosen otherwise: a robot network sets
``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET`` (or unsets ``ROS_LOCALHOST_ONLY``) before running.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

LOCAL_DDS = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1"}


def child_env(domain_id: Optional[int] = None, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """A copy of the environment for a child ROS process: loopback DDS by default, the user's
    settings where given, and ``domain_id`` if not None."""
    env = dict(os.environ if base is None else base)
    for k, v in LOCAL_DDS.items():
        env.setdefault(k, v)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def ensure_local_dds() -> None:
    """Apply the loopback defaults to this process (before rclpy.init)."""
    for k, v in LOCAL_DDS.items():
        os.environ.setdefault(k, v)


def ros_available() -> bool:
    """Whether rclpy can be imported (ROS 2 sourced, or the rclpy wheels installed)."""
    import importlib.util

    return importlib.util.find_spec("rclpy") is not None


def domain_in_use(domain_id: int) -> bool:
    """Whether a DDS participant on this machine already uses ``domain_id``: its first
    participant's unicast discovery port (RTPS default 7410 + 250 * domain) is bound."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("0.0.0.0", 7410 + 250 * int(domain_id)))
        return False
    except OSError:
        return True
    finally:
        sock.close()


def free_domain_id(low: int = 150, high: int = 232) -> int:
    """A ROS_DOMAIN_ID in [low, high] that no local participant uses (random start, so
    concurrent callers rarely pick the same one)."""
    import random

    ids = list(range(low, high + 1))
    start = random.randrange(len(ids))
    for domain in ids[start:] + ids[:start]:
        if not domain_in_use(domain):
            return domain
    return ids[start]
