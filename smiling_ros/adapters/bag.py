"""rosbag2 files through the ``rosbags`` library (no rosbag2_py needed).

Writing: :class:`BagWriter` (MCAP by default, or sqlite3), the format ``ros2 bag record`` writes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from smiling_ros.errors import UserError


def typestore():
    """The message type store used for (de)serialisation (ROS 2 Jazzy definitions)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


class BagWriter:
    """Write CDR-serialised messages into a new rosbag2 directory.

    ``write`` takes raw CDR bytes (as rclpy delivers with ``raw=True``), so recording never
    deserialises. ``write_msg`` serialises a rosbags message object (used to build test bags).
    """

    def __init__(self, path: str | Path, storage: str = "mcap", store=None):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path)
        if self.path.exists():
            raise UserError(f"{self.path}: output bag already exists (choose a new --out)")
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}.get(storage)
        if plugin is None:
            raise UserError(f"bag storage must be 'mcap' or 'sqlite3', got '{storage}'")
        self.store = store or typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.open()
        self._conns: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def add_topic(self, topic: str, msgtype: str) -> None:
        if topic in self._conns:
            return
        if msgtype not in self.store.fielddefs:
            raise UserError(f"topic '{topic}': message type '{msgtype}' is not known to the bag writer")
        self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self.store)
        self.counts[topic] = 0

    def write(self, topic: str, timestamp_ns: int, data: bytes | memoryview) -> None:
        self._writer.write(self._conns[topic], int(timestamp_ns), data)
        self.counts[topic] += 1

    def write_msg(self, topic: str, timestamp_ns: int, msg, msgtype: Optional[str] = None) -> None:
        if topic not in self._conns:
            self.add_topic(topic, msgtype or msg.__msgtype__)
        self.write(topic, timestamp_ns, self.store.serialize_cdr(msg, msgtype or msg.__msgtype__))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
