"""recorder_node: configured topics -> a rosbag2 (MCAP by default, or sqlite3) via ``rosbags``.

    recorder_node --ros-args -p config:=arm_reach -p output:=demos_bag
    recorder_node --ros-args -p config:=arm_reach -p output:=demos_bag -p max_episodes:=20 -p use_sim_time:=true

Topics: unless the ``topics`` parameter lists them, the config's observation and action field
topics, ``topics.joint_states``, ``topics.episode`` (markers) and ``record.extra_topics``. Each
topic's type comes from the config's field ``type`` (or the known type of joint_states / the
marker topic) or, failing that, from the ROS graph. A topic is subscribed once a publisher for it
exists, with the publishers' QoS (reliable unless a publisher is best effort; transient local
when all publishers are, which delivers late-joined episode markers), depth 1000.

Messages are received serialised (``raw=True``) and written unchanged, stamped with the node's
clock at reception (wall time, or /clock with ``use_sim_time:=true``), as ``ros2 bag record``
does. Episode markers (std_msgs/String JSON ``{"event": "start"|"end", "episode": k, ...}``) are
also echoed on stdout as ``EPISODE {json}`` lines for a parent process to follow; with
``max_episodes`` the node stops itself after that many "end" markers (after ``drain_s`` more
seconds of recording, so messages in flight are kept). On SIGINT/SIGTERM or when stopping, the
bag is closed so it reads back; a summary ``RECORDED {json}`` line (topic counts) goes to stdout.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from smiling_ros.errors import UserError
from smiling_ros.ros.node_utils import ParamSpec, declare_params, param, run_node

NODE_NAME = "recorder_node"

PARAMETERS: ParamSpec = {
    "config": (str, "task config: a YAML path or a shipped name (arm_reach, hopper); default arm_reach"),
    "output": (str, "bag directory to create (must not exist); default rosbag2_<date>_<time>"),
    "storage": (str, "'mcap' or 'sqlite3'; unset: the config's record.storage"),
    "topics": (list, "topics to record; unset: the config's observation/action/joint_states/episode/extra topics"),
    "max_episodes": (int, "stop after this many episode 'end' markers (0: run until SIGINT/SIGTERM)"),
    "drain_s": (float, "seconds to keep recording after the last episode before stopping (default 0.5)"),
    "depth": (int, "subscription queue depth (default 1000)"),
}

_KNOWN_TYPES = {"joint_states": "sensor_msgs/msg/JointState", "episode": "std_msgs/msg/String"}


def topics_from_config(cfg) -> dict[str, str]:
    """topic -> message type ('' when it must be discovered) for the config's recording set."""
    out: dict[str, str] = {}
    for spec in list(cfg.observation) + list(cfg.action):
        if spec.type or spec.topic not in out:
            out[spec.topic] = spec.type or out.get(spec.topic, "")
    out.setdefault(cfg.topics.joint_states, _KNOWN_TYPES["joint_states"])
    out[cfg.topics.episode] = _KNOWN_TYPES["episode"]
    for topic in cfg.record.extra_topics:
        out.setdefault(topic, "")
    return out


class RecorderNode(Node):
    """Records topics into a bag (see the module docstring)."""

    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        declare_params(self, PARAMETERS)
        from smiling_ros.config import load_config
        from smiling_ros.ros.msgs import normalize_type

        p = lambda name, default=None: param(self, PARAMETERS, name, default)  # noqa: E731
        cfg = load_config(p("config", "arm_reach"))
        self.marker_topic = cfg.topics.episode
        wanted = topics_from_config(cfg)
        listed = p("topics", None)
        if listed:
            wanted = {t: wanted.get(t, "") for t in listed}
        for topic in wanted:
            if not topic.startswith("/"):
                raise UserError(f"parameter 'topics': topic names must be absolute ('/...'), got '{topic}'")
        self.types = {t: (normalize_type(tp) if tp else "") for t, tp in wanted.items()}
        self.storage = p("storage", cfg.record.storage)
        if self.storage not in ("mcap", "sqlite3"):
            raise UserError(f"parameter 'storage': 'mcap' or 'sqlite3', got '{self.storage}'")
        self.max_episodes = p("max_episodes", 0)
        self.drain_s = p("drain_s", 0.5)
        self.depth = p("depth", 1000)
        output = p("output", "") or time.strftime("rosbag2_%Y_%m_%d-%H_%M_%S")
        self.output = Path(output)
        if self.output.exists():
            raise UserError(f"{self.output}: output bag already exists (choose a new output)")
        self.use_sim_time = bool(self.get_parameter("use_sim_time").value)
        self._subs: dict[str, Any] = {}
        self._waiting_logged: set[str] = set()
        self.episodes_ended = 0
        self.done = False
        self.exit_code = 0
        self._stop_at: Optional[float] = None
        self.writer = None
        from smiling_ros.adapters.bag import BagWriter

        self.writer = BagWriter(self.output, storage=self.storage)  # last: nothing can fail after this
        self._string_cls = None
        self._poll_timer = self.create_timer(0.05, self._poll)
        self.get_logger().info(f"recording {sorted(self.types)} to {self.output} ({self.storage})"
                               + (" in simulated time" if self.use_sim_time else ""))

    # ------------------------------------------------------------------ subscriptions
    def _now_ns(self) -> int:
        if self.use_sim_time:
            ns = self.get_clock().now().nanoseconds
            if ns > 0:
                return ns
        return time.time_ns()

    def _poll(self) -> None:
        """Subscribe to topics whose publishers have appeared; stop once drained."""
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.done = True
            return
        pending = [t for t in self.types if t not in self._subs]
        if not pending:
            return
        graph = dict(self.get_topic_names_and_types())
        for topic in pending:
            pubs = self.get_publishers_info_by_topic(topic)
            if not pubs:
                if topic not in self._waiting_logged:
                    self.get_logger().info(f"waiting for a publisher on {topic}")
                    self._waiting_logged.add(topic)
                continue
            self._subscribe(topic, pubs, graph.get(topic, []))

    def _subscribe(self, topic: str, pubs: list[Any], graph_types: list[str]) -> None:
        from smiling_ros.ros.msgs import message_class

        msgtype = self.types[topic]
        if not msgtype:
            if len(graph_types) != 1:
                raise UserError(f"topic '{topic}': cannot tell its type from the graph ({graph_types})")
            msgtype = graph_types[0]
        elif graph_types and msgtype not in graph_types:
            raise UserError(f"topic '{topic}': configured type {msgtype} but publishers offer {', '.join(graph_types)}")
        cls = message_class(msgtype)
        reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in pubs)
        latched = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in pubs)
        qos = QoSProfile(
            depth=self.depth, history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        self.writer.add_topic(topic, msgtype)
        self.types[topic] = msgtype
        if topic == self.marker_topic and msgtype == _KNOWN_TYPES["episode"]:
            callback = self._marker_callback(topic)
        else:
            writer, now = self.writer, self._now_ns

            def callback(data: bytes, topic: str = topic) -> None:
                writer.write(topic, now(), data)

        self._subs[topic] = self.create_subscription(cls, topic, callback, qos, raw=True)
        self.get_logger().info(f"recording {topic} [{msgtype}] ({'reliable' if reliable else 'best effort'}"
                               f"{', transient local' if latched else ''})")

    def _marker_callback(self, topic: str):
        from rclpy.serialization import deserialize_message
        from std_msgs.msg import String

        from smiling_ros.ros.msgs import parse_episode_marker

        def callback(data: bytes) -> None:
            self.writer.write(topic, self._now_ns(), data)
            marker = parse_episode_marker(deserialize_message(data, String).data)
            if marker is None:
                return
            print("EPISODE " + json.dumps(marker, sort_keys=True), flush=True)
            if marker["event"] == "end":
                self.episodes_ended += 1
                if self.max_episodes and self.episodes_ended >= self.max_episodes and self._stop_at is None:
                    self._stop_at = time.monotonic() + self.drain_s

        return callback

    def close(self) -> None:
        """Close the bag (flushes it; it reads back) and print the summary line."""
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        writer.close()
        print("RECORDED " + json.dumps({"output": str(self.output), "storage": self.storage,
                                        "counts": writer.counts, "episodes": self.episodes_ended}), flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    """Console script ``recorder_node`` (also ``ros2 run smiling_ros recorder_node``)."""
    return run_node(NODE_NAME, RecorderNode, argv)


if __name__ == "__main__":
    sys.exit(main())
