"""ROS message classes by type name, and builders for the messages the project publishes.

Type names are the ROS 2 form ``pkg/msg/Name`` (as in configs, ``ros2 topic info`` and bags);
``pkg/Name`` is accepted too.
"""
from __future__ import annotations

import importlib
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from smiling_ros.errors import UserError


def normalize_type(type_name: str) -> str:
    """``pkg/Name`` or ``pkg/msg/Name`` -> ``pkg/msg/Name`` (UserError for anything else)."""
    parts = [p for p in str(type_name).strip().split("/") if p]
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or parts[1] not in ("msg", "srv", "action"):
        raise UserError(f"message type '{type_name}': expected 'package/msg/Name'")
    return "/".join(parts)


def message_class(type_name: str) -> type:
    """The rclpy class for ``type_name`` (e.g. ``std_msgs/msg/Float64MultiArray``).

    Raises UserError naming the type when the package is not installed or has no such message.
    """
    pkg, kind, name = normalize_type(type_name).split("/")
    try:
        module = importlib.import_module(f"{pkg}.{kind}")
    except ImportError:
        raise UserError(
            f"message type '{type_name}': package '{pkg}' is not installed "
            f"(source its ROS 2 workspace or pip install ros-{pkg.replace('_', '-')})"
        ) from None
    cls = getattr(module, name, None)
    if cls is None or not hasattr(cls, "_TYPE_SUPPORT") and not hasattr(cls, "get_fields_and_field_types"):
        raise UserError(f"message type '{type_name}': package '{pkg}' has no {kind} '{name}'")
    return cls


def type_name_of(cls_or_msg: Any) -> str:
    """``pkg/msg/Name`` of an rclpy message class or instance."""
    cls = cls_or_msg if isinstance(cls_or_msg, type) else type(cls_or_msg)
    pkg = cls.__module__.split(".")[0]
    return f"{pkg}/msg/{cls.__name__}"


def float64_array(values: Iterable[float] | np.ndarray):
    """std_msgs/Float64MultiArray with ``data`` = ``values`` (no layout: a flat vector)."""
    from std_msgs.msg import Float64MultiArray

    msg = Float64MultiArray()
    msg.data = np.asarray(values, dtype=np.float64).ravel()
    return msg


def joint_state(names: Sequence[str], position: np.ndarray, velocity: Optional[np.ndarray] = None,
                stamp_ns: Optional[int] = None, frame_id: str = ""):
    """sensor_msgs/JointState; ``stamp_ns`` (nanoseconds) goes into header.stamp."""
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.name = list(names)
    msg.position = np.asarray(position, dtype=np.float64).ravel()
    if velocity is not None:
        msg.velocity = np.asarray(velocity, dtype=np.float64).ravel()
    if stamp_ns is not None:
        set_stamp(msg.header, stamp_ns)
    msg.header.frame_id = frame_id
    return msg


def set_stamp(header, stamp_ns: int) -> None:
    """Set ``header.stamp`` to ``stamp_ns`` nanoseconds."""
    set_time(header.stamp, stamp_ns)


def set_time(time_msg, stamp_ns: int) -> None:
    """Set a builtin_interfaces/Time to ``stamp_ns`` nanoseconds."""
    time_msg.sec, time_msg.nanosec = divmod(int(stamp_ns), 1_000_000_000)


def string_msg(text: str):
    from std_msgs.msg import String

    msg = String()
    msg.data = text
    return msg


def episode_marker(event: str, episode: int, **fields: Any):
    """std_msgs/String carrying the JSON episode marker (:func:`smiling_ros.data.episodes.marker_text`)."""
    from smiling_ros.data.episodes import marker_text

    return string_msg(marker_text(event, episode, **fields))
