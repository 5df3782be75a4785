"""Environment for ROS 2 processes the project starts itself (demo, record-demos, tests).

DDS stays on the loopback interface unless the user has chosen otherwise: a robot network sets
``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET`` (or, on Humble, ``ROS_LOCALHOST_ONLY=0``) before running.

``ROS_AUTOMATIC_DISCOVERY_RANGE`` exists since Iron; Jazzy still honours the deprecated
``ROS_LOCALHOST_ONLY`` but warns about it in every process (and then ignores the discovery
range), Kilted ignores it. So ``ROS_LOCALHOST_ONLY=1`` is set only where the installed rclpy
predates the discovery range.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Mapping, Optional

RANGE = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
LEGACY = {"ROS_LOCALHOST_ONLY": "1"}
# Distributions whose rcl has no ROS_AUTOMATIC_DISCOVERY_RANGE (rclpy < 4).
_LEGACY_DISTROS = ("foxy", "galactic", "humble")


@lru_cache(maxsize=None)
def rclpy_major() -> Optional[int]:
    """Major version of the installed rclpy (Humble 3, Iron 4/5, Jazzy 7, Kilted 9), or None."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("rclpy", "ros-rclpy"):
        try:
            return int(version(dist).split(".")[0])
        except (PackageNotFoundError, ValueError):
            continue
    return None


def has_discovery_range() -> bool:
    """Whether the ROS 2 in use knows ROS_AUTOMATIC_DISCOVERY_RANGE (Iron and later)."""
    major = rclpy_major()
    if major is not None:
        return major >= 4
    distro = os.environ.get("ROS_DISTRO", "").strip().lower()
    if distro:
        return distro not in _LEGACY_DISTROS
    return False  # unknown: the legacy variable too, so discovery stays on loopback either way


def local_dds() -> dict[str, str]:
    """The loopback defaults for this distribution (see the module docstring)."""
    return dict(RANGE) if has_discovery_range() else {**RANGE, **LEGACY}


def child_env(domain_id: Optional[int] = None, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """A copy of the environment for a child ROS process: loopback DDS by default, the user's
    settings where given, and ``domain_id`` if not None."""
    env = dict(os.environ if base is None else base)
    for k, v in local_dds().items():
        env.setdefault(k, v)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def ensure_local_dds() -> None:
    """Apply the loopback defaults to this process (before rclpy.init)."""
    for k, v in local_dds().items():
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
