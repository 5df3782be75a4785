"""Policy announcements over ROS, for one machine or two (smiling_ros.learn.transfer has the format).

Topics (``policy_topic`` from the config's ``topics.policy``):

- ``<policy_topic>`` std_msgs/String, EVENTS QoS: a JSON announcement ``{"path", "name", "size",
  "sha256", "transfer"}`` (a bare path is still accepted). Without ``transfer`` the controller
  loads ``path`` after checking its hash (one machine); with it, it waits for the bytes.
- ``<policy_topic>/checkpoint`` std_msgs/UInt8MultiArray, reliable, transient local, depth 1: the
  checkpoint itself (magic, JSON header, bytes). A controller on another machine stores it after
  checking size and SHA-256 and loads the stored copy. Transient local: a controller that starts
  (or reconnects) later still gets the newest checkpoint while the announcer runs.
"""
from __future__ import annotations

import array
from pathlib import Path
from typing import Any, Optional

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from smiling_ros.learn import transfer

BLOB = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                  history=HistoryPolicy.KEEP_LAST)


def blob_topic(policy_topic: str) -> str:
    return policy_topic.rstrip("/") + "/checkpoint"


class CheckpointAnnouncer:
    """Announces checkpoints on ``policy_topic``; with ``inline`` also sends their bytes."""

    def __init__(self, node: Any, policy_topic: str, inline: bool = True, max_bytes: Optional[int] = None,
                 publisher: Any = None):
        from std_msgs.msg import String, UInt8MultiArray

        from smiling_ros.ros.qos import EVENTS

        self.inline, self.max_bytes = inline, max_bytes
        self._String, self._Blob = String, UInt8MultiArray
        self.pub = publisher if publisher is not None else node.create_publisher(String, policy_topic, EVENTS)
        self.blob_pub = node.create_publisher(UInt8MultiArray, blob_topic(policy_topic), BLOB) if inline else None

    def announce(self, path: str | Path) -> transfer.Header:
        """Publish the checkpoint (bytes first, so a controller never waits on a path it cannot read)."""
        header, data = transfer.read_checkpoint(path, self.max_bytes)
        if self.blob_pub is not None:
            msg = self._Blob()
            msg.data = array.array("B", transfer.encode(header, data))
            self.blob_pub.publish(msg)
        self.pub.publish(self._String(data=transfer.announcement(path, header, self.blob_pub is not None)))
        return header

    def publishers(self) -> list[Any]:
        return [p for p in (self.pub, self.blob_pub) if p is not None]


def subscribe_transfers(node: Any, policy_topic: str, callback: Any) -> Any:
    """Subscribe to checkpoint transfers; ``callback(data)`` gets the raw bytes (array) unverified:
    verify them off the executor thread with :func:`smiling_ros.learn.transfer.decode`."""
    from std_msgs.msg import UInt8MultiArray

    return node.create_subscription(UInt8MultiArray, blob_topic(policy_topic), lambda m: callback(m.data), BLOB)


def announce_checkpoint(path: str, topic: str, *, inline: bool, max_bytes: int, wait_s: float) -> tuple[Any, int]:
    """Announce ``path`` from a short-lived node of its own (``smiling-ros announce``): wait up to
    ``wait_s`` for a controller to subscribe, announce (with the bytes when ``inline``), wait for every
    matched controller to acknowledge, and stay up to 1 s more (transient local) for one that
    reconnects. Returns the announcement header and the number of matched controllers."""
    import time

    import rclpy
    from rclpy.duration import Duration

    from smiling_ros.ros.dds_env import ensure_local_dds

    ensure_local_dds()
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("smiling_ros_announce", context=ctx)
    try:
        ann = CheckpointAnnouncer(node, topic, inline=inline, max_bytes=max_bytes)
        deadline = time.monotonic() + wait_s
        pubs = ann.publishers()
        while time.monotonic() < deadline and min(p.get_subscription_count() for p in pubs) < 1:
            time.sleep(0.05)
        header = ann.announce(path)
        for p in pubs:
            p.wait_for_all_acked(Duration(seconds=max(0.0, deadline - time.monotonic())))
        matched = min(p.get_subscription_count() for p in pubs)
        if matched >= 1:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        return header, matched
    finally:
        node.destroy_node()
        ctx.try_shutdown()
