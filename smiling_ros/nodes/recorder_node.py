"""recorder_node: configured topics -> a rosbag2 (MCAP by default, or sqlite3) via ``rosbags``.

    recorder_node --ros-args -p config:=arm_reach -p output:=demos_bag
    recorder_node --ros-args -p config:=arm_reach -p output:=demos_bag -p max_episodes:=20 -p use_sim_time:=true

Topics: unless the ``topics`` parameter lists them, the config's observation and action field
topics, ``topics.joint_states``, ``topics.episode`` (markers) and ``record.extra_topics``. Each
topic's type comes from the config's field ``type`` (or the known type of joint_states / the
marker topic) or, failing that, from the ROS graph. A topic is subscribed once a publisher for it
exists, with the publishers' QoS (reliable unless a publisher is best effort; transient local
when all publishers are, which delivers late-joined episode markers), depth 1000.

Messages are received serialised (``raw=True``) and written unchanged. Bag timestamps: the
time DDS received each message (wall clock, as ``ros2 bag record`` does, but free of this node's
processing delays), or with ``use_sim_time:=true`` the simulated time, exactly: /clock (as
sim_node publishes it with ``publish_clock``) is followed from its start, and each message gets
the last /clock value published before it (see :class:`SimTimeStamper`), so a simulation run
faster than real time still yields a bag stamped at its control rate. Gaps in each publisher's
sequence numbers are counted as lost messages.

Marking takes: the services ``~/start_episode``, ``~/stop_episode`` and ``~/discard_episode``
(std_srvs/Trigger) start, end or discard the current take; a joystick button does the same without
a keyboard (``joy_topic``, sensor_msgs/Joy: ``joy_button`` starts a take and, pressed again, ends
it; ``joy_discard_button`` discards it; defaults from the config's ``record:`` section). Each
request publishes an episode marker on ``topics.episode`` (reliable, transient local), which is
recorded like any other marker; a request that does not apply (stop with no open take) answers
``success: false`` and publishes nothing.

Episode markers (std_msgs/String JSON ``{"event": "start"|"end"|"discard", "episode": k, ...}``) are also
echoed on stdout as ``EPISODE {json}`` lines for a parent process to follow; with
``max_episodes`` the node stops itself after that many "end" markers (after ``drain_s`` more
seconds of recording, so messages in flight are kept). On SIGINT/SIGTERM or when stopping, the
bag is closed so it reads back, and a summary line ``RECORDED {"output", "storage", "counts",
"lost", "episodes"}`` goes to stdout.

Crash safety: every ``flush_period_s`` (default 1 s) the bag is flushed (MCAP: the open chunk is
written out with its index; sqlite3: the transaction is committed), so a recorder killed with
SIGKILL (or a crash) loses at most about that much. Such a bag has no metadata.yaml (and an MCAP
no footer); ``smiling-ros import-bag --salvage BAG`` reads it up to the last flush.
"""
from __future__ import annotations

import bisect
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from smiling_ros.errors import UserError
from smiling_ros.ros.node_utils import ParamSpec, declare_params, param, run_node, steady_clock

NODE_NAME = "recorder_node"

PARAMETERS: ParamSpec = {
    "config": (str, "task config: a YAML path or a shipped name (arm_reach, hopper); default arm_reach"),
    "output": (str, "bag directory to create (must not exist); default rosbag2_<date>_<time>"),
    "storage": (str, "'mcap' or 'sqlite3'; unset: the config's record.storage"),
    "topics": (list, "topics to record; unset: the config's observation/action/joint_states/episode/extra topics"),
    "max_episodes": (int, "stop after this many episode 'end' markers (0: run until SIGINT/SIGTERM)"),
    "drain_s": (float, "seconds to keep recording after the last episode before stopping (default 0.5)"),
    "depth": (int, "subscription queue depth (default 1000)"),
    "flush_period_s": (float, "seconds between flushes to disk; a crash loses at most this much (default 1.0; "
                              "0: only when closing)"),
    "joy_topic": (str, "sensor_msgs/Joy topic whose button marks takes; unset: the config's record.joy_topic "
                       "(empty: none)"),
    "joy_button": (int, "Joy button that starts a take and, pressed again, ends it; unset: record.joy_button"),
    "joy_discard_button": (int, "Joy button that discards the open take (-1: none); unset: "
                                "record.joy_discard_button"),
}

_BATCH = 1000  # messages taken per executor callback at most

_KNOWN_TYPES = {"joint_states": "sensor_msgs/msg/JointState", "episode": "std_msgs/msg/String",
                "joy": "sensor_msgs/msg/Joy"}


def topics_from_config(cfg) -> dict[str, str]:
    """topic -> message type ('' when it must be discovered) for the config's recording set."""
    out: dict[str, str] = {}
    for spec in list(cfg.observation) + list(cfg.action):
        if spec.type or spec.topic not in out:
            out[spec.topic] = spec.type or out.get(spec.topic, "")
    out.setdefault(cfg.topics.joint_states, _KNOWN_TYPES["joint_states"])
    out[cfg.topics.episode] = _KNOWN_TYPES["episode"]
    if cfg.record.joy_topic:
        out.setdefault(cfg.record.joy_topic, _KNOWN_TYPES["joy"])
    for topic in cfg.record.extra_topics:
        out.setdefault(topic, "")
    return out


class SimTimeStamper:
    """Stamps messages with simulated time, exactly, whatever order topics arrive in.

    The simulator publishes /clock (simulated time) before each group of messages of one step,
    from the same process. A message's DDS source timestamp (the publisher's wall clock at
    publishing) therefore falls between the source timestamps of the /clock message of its step
    and the next one: its simulated time is the value of the last /clock published before it.
    Messages wait here until a /clock published after them has arrived (or ``flush`` gives up
    on waiting), then go to the writer.
    """

    def __init__(self, writer):
        self.writer = writer
        self._wall: list[int] = []  # source timestamps of /clock messages [ns], increasing
        self._sim: list[int] = []  # their simulated times [ns]
        self._pending: list[tuple[str, int, bytes, float]] = []  # (topic, source ns, data, arrival monotonic)

    def clock(self, sim_ns: int, source_ns: Optional[int] = None) -> None:
        """A /clock message: simulated time ``sim_ns`` published at wall time ``source_ns``."""
        source_ns = time.time_ns() if source_ns is None else source_ns
        if self._wall and source_ns <= self._wall[-1]:
            return
        self._wall.append(source_ns)
        self._sim.append(sim_ns)
        if len(self._wall) > 20000:  # keep the last ~minutes of mapping
            del self._wall[:10000], self._sim[:10000]
        self.flush(0.0)

    def add(self, topic: str, source_ns: int, data: bytes) -> None:
        self._pending.append((topic, source_ns, data, time.monotonic()))
        if self._wall and source_ns < self._wall[-1]:
            self.flush(0.0)

    def sim_time(self, source_ns: int) -> int:
        """Simulated time of a message published at wall time ``source_ns`` (wall time before any /clock)."""
        i = bisect.bisect_right(self._wall, source_ns) - 1
        if i < 0:
            return self._sim[0] if self._sim else source_ns
        return self._sim[i]

    def flush(self, older_than: Optional[float]) -> None:
        """Write the messages whose time is known; also those that arrived before monotonic time
        ``older_than``; everything when it is None."""
        if not self._pending:
            return
        latest = self._wall[-1] if self._wall else None
        keep = []
        for item in self._pending:
            topic, source_ns, data, arrived = item
            if older_than is None or (latest is not None and source_ns < latest) or arrived < older_than:
                self.writer.write(topic, self.sim_time(source_ns), data)
            else:
                keep.append(item)
        self._pending = keep


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
        from smiling_ros.config import check_topic

        for topic in wanted:
            check_topic(topic, "parameter 'topics'")
        self.types = {t: (normalize_type(tp) if tp else "") for t, tp in wanted.items()}
        self.storage = p("storage", cfg.record.storage)
        if self.storage not in ("mcap", "sqlite3"):
            raise UserError(f"parameter 'storage': 'mcap' or 'sqlite3', got '{self.storage}'")
        self.max_episodes = p("max_episodes", 0)
        self.drain_s = p("drain_s", 0.5)
        self.depth = p("depth", 1000)
        if self.depth < 1:
            raise UserError(f"parameter 'depth': must be >= 1, got {self.depth}")
        if self.max_episodes < 0:
            raise UserError(f"parameter 'max_episodes': must be >= 0, got {self.max_episodes}")
        if not (self.drain_s >= 0):
            raise UserError(f"parameter 'drain_s': must be >= 0, got {self.drain_s}")
        self.flush_period_s = p("flush_period_s", 1.0)
        if not (0 <= self.flush_period_s < float("inf")):
            raise UserError(f"parameter 'flush_period_s': must be >= 0 (0: flush only when closing), "
                            f"got {self.flush_period_s}")
        self._next_flush = time.monotonic() + self.flush_period_s
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
        from smiling_ros.io.bag import BagWriter

        self.writer: Optional[BagWriter] = None

        self.writer = BagWriter(self.output, storage=self.storage)  # last: nothing can fail after this
        self.stamper = SimTimeStamper(self.writer) if self.use_sim_time else None
        # Messages missing from publishers' sequence numbers, per topic (None: cannot tell).
        self.lost: dict[str, Optional[int]] = {}
        self._last_seq: dict[tuple[str, Optional[bytes]], int] = {}
        self._setup_takes(cfg, p)
        self._poll_timer = self.create_timer(0.05, self._poll, clock=steady_clock())
        self.get_logger().info(f"recording {sorted(self.types)} to {self.output} ({self.storage})"
                               + (" in simulated time" if self.use_sim_time else ""))

    # ------------------------------------------------------------------ marking takes
    def _setup_takes(self, cfg, p) -> None:
        """The episode services and the optional joystick button (see the module docstring)."""
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from smiling_ros.config import RecordSection, build
        from smiling_ros.data.episodes import JoyButtons, Takes
        from smiling_ros.ros.qos import EVENTS, SENSOR

        joy_topic = p("joy_topic", cfg.record.joy_topic)
        rec = build(RecordSection, {"joy_topic": joy_topic, "joy_button": p("joy_button", cfg.record.joy_button),
                                    "joy_discard_button": p("joy_discard_button", cfg.record.joy_discard_button)},
                    "parameters")
        self.takes = Takes()
        self._marker_pub = self.create_publisher(String, self.marker_topic, EVENTS)
        self.types.setdefault(self.marker_topic, _KNOWN_TYPES["episode"])  # markers are always recorded
        for name, request in (("start", self.takes.start), ("stop", self.takes.stop),
                              ("discard", self.takes.discard)):
            self.create_service(Trigger, f"~/{name}_episode", self._take_handler(request))
        self.joy = None
        if rec.joy_topic:
            from sensor_msgs.msg import Joy

            self.joy = JoyButtons(rec.joy_topic, rec.joy_button, rec.joy_discard_button)
            self.types.setdefault(rec.joy_topic, _KNOWN_TYPES["joy"])
            self._joy_sub = self.create_subscription(Joy, rec.joy_topic, self._on_joy, SENSOR)
            self.get_logger().info(f"takes marked by {rec.joy_topic} button {rec.joy_button}"
                                   + (f" (discard: button {rec.joy_discard_button})"
                                      if rec.joy_discard_button >= 0 else ""))

    def _publish_marker(self, marker: dict) -> None:
        from smiling_ros.data.episodes import marker_text
        from smiling_ros.ros.msgs import string_msg

        self._marker_pub.publish(string_msg(marker_text(marker["event"], marker["episode"])))

    def _take_handler(self, request: Any) -> Any:
        """The service callback for one take request (start, stop or discard)."""
        def handle(_req: Any, res: Any) -> Any:
            return self._take_service(request, res)
        return handle

    def _take_service(self, request, response):
        marker, line = request()
        if marker is not None:
            self._publish_marker(marker)
            self.get_logger().info(line)
        response.success = marker is not None
        response.message = line
        return response

    def _on_joy(self, msg) -> None:
        try:
            if self.joy is None:
                return
            events = self.joy.update(list(msg.buttons))
        except UserError as exc:
            self.get_logger().warning(str(exc), throttle_duration_sec=5.0)
            return
        msg_topic = self.joy.topic
        for event in events:
            marker, line = self.takes.toggle() if event == "toggle" else self.takes.discard()
            if marker is not None:
                self._publish_marker(marker)
                self.get_logger().info(f"{line} ({msg_topic})")

    # ------------------------------------------------------------------ subscriptions
    def _poll(self) -> None:
        """Subscribe to topics whose publishers have appeared; flush late messages; stop once drained."""
        now = time.monotonic()
        if self.stamper is not None:
            self.stamper.flush(now - 0.5)
        if self.flush_period_s > 0 and now >= self._next_flush and self.writer is not None:
            self.writer.flush()
            self._next_flush = now + self.flush_period_s
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.done = True
            return
        pending = [t for t in self.types if t not in self._subs]
        if self.stamper is not None and "/clock" not in self._subs:
            pending.insert(0, "/clock")  # simulated time first: nothing is stamped before it is known
        if not pending:
            return
        graph = dict(self.get_topic_names_and_types())
        for topic in pending:
            pubs = self.get_publishers_info_by_topic(topic)
            if not pubs:
                if topic not in self._waiting_logged:
                    self.get_logger().info(f"waiting for a publisher on {topic}")
                    self._waiting_logged.add(topic)
                if topic == "/clock" and topic not in self.types:
                    return
                continue
            self._subscribe(topic, pubs, graph.get(topic, []))

    def _qos(self, pubs: list[Any]) -> tuple[QoSProfile, str]:
        """The publishers' QoS, as a subscriber must ask for it to match all of them."""
        reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in pubs)
        latched = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in pubs)
        qos = QoSProfile(
            depth=self.depth, history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        return qos, ("reliable" if reliable else "best effort") + (", transient local" if latched else "")

    def _subscribe(self, topic: str, pubs: list[Any], graph_types: list[str]) -> None:
        from smiling_ros.ros.msgs import message_class

        if topic == "/clock" and topic not in self.types:  # simulated time source, not recorded
            from rosgraph_msgs.msg import Clock

            qos, desc = self._qos(pubs)
            self._subs[topic] = self.create_subscription(Clock, topic, self._on_clock, qos)
            self.get_logger().info(f"following simulated time on /clock ({desc})")
            return
        msgtype = self.types[topic]
        if not msgtype:
            if len(graph_types) != 1:
                raise UserError(f"topic '{topic}': cannot tell its type from the graph ({graph_types})")
            msgtype = graph_types[0]
        elif graph_types and msgtype not in graph_types:
            raise UserError(f"topic '{topic}': configured type {msgtype} but publishers offer {', '.join(graph_types)}")
        cls = message_class(msgtype)
        qos, desc = self._qos(pubs)
        if self.writer is None:
            raise UserError(f"topic '{topic}': the recorder's bag is closed")
        self.writer.add_topic(topic, msgtype)
        self.types[topic] = msgtype
        marker = topic == self.marker_topic and msgtype == _KNOWN_TYPES["episode"]
        self._subs[topic] = self.create_subscription(cls, topic, self._callback(topic, marker), qos, raw=True)
        self.get_logger().info(f"recording {topic} [{msgtype}] ({desc})")

    def _callback(self, topic: str, marker: bool):
        """The raw-message callback for ``topic``: count sequence gaps, stamp, write.

        After the message the executor hands over, it takes whatever else is already queued on
        the subscription (up to ``_BATCH``) directly: the executor's per-message overhead is what
        limits a Python recorder, and draining in place multiplies throughput (bench/recorder).
        """
        writer, stamper, lost, last_seq = self.writer, self.stamper, self.lost, self._last_seq
        lost[topic] = 0
        on_marker = self._on_marker
        subs = self._subs

        def count(seq: int, gid: Optional[dict]) -> None:
            # Sequence numbers count per publisher. Jazzy's message info has no publisher_gid:
            # there a topic's numbers are followed as one stream, and a number that does not
            # increase means several publishers (or a restarted one): losses are then unknown.
            key = (topic, gid["data"] if gid else None)
            prev = last_seq.get(key)
            if prev is not None and gid is None and seq <= prev:
                lost[topic] = None
                return
            so_far = lost[topic]
            if prev is not None and seq > prev + 1 and so_far is not None:
                lost[topic] = so_far + seq - prev - 1
            last_seq[key] = seq

        def handle(data: bytes, info: dict) -> None:
            seq = info.get("publication_sequence_number")
            if seq and lost[topic] is not None:
                count(seq, info.get("publisher_gid"))
            if stamper is not None:
                stamper.add(topic, info["source_timestamp"], data)
            else:
                if writer is not None:
                    writer.write(topic, info["received_timestamp"] or time.time_ns(), data)
            if marker:
                on_marker(data)

        def callback(data: bytes, info: dict) -> None:
            handle(data, info)
            sub = subs.get(topic)
            if sub is None:
                return
            with sub.handle:
                for _ in range(_BATCH):
                    taken = sub.handle.take_message(sub.msg_type, True)
                    if taken is None:
                        break
                    handle(taken[0], taken[1])

        return callback

    def _on_clock(self, msg: Any, info: Any) -> None:
        if self.stamper is None:
            return
        self.stamper.clock(msg.clock.sec * 1_000_000_000 + msg.clock.nanosec, info["source_timestamp"] or None)

    def _on_marker(self, data: bytes) -> None:
        from rclpy.serialization import deserialize_message
        from std_msgs.msg import String

        from smiling_ros.data.episodes import parse_marker_text

        marker = parse_marker_text(deserialize_message(data, String).data)
        if marker is None:
            return
        print("EPISODE " + json.dumps(marker, sort_keys=True), flush=True)
        if marker["event"] == "end":
            self.episodes_ended += 1
            if self.max_episodes and self.episodes_ended >= self.max_episodes and self._stop_at is None:
                self._stop_at = time.monotonic() + self.drain_s

    def close(self) -> None:
        """Close the bag (flushes it; it reads back) and print the summary line."""
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        if self.stamper is not None:
            self.stamper.flush(None)
        writer.close()
        print("RECORDED " + json.dumps({"output": str(self.output), "storage": self.storage, "counts": writer.counts,
                                        "lost": self.lost, "episodes": self.episodes_ended}), flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    """Console script ``recorder_node`` (also ``ros2 run smiling_ros recorder_node``)."""
    from smiling_ros.learn.runtime import limit_threads

    limit_threads()
    return run_node(NODE_NAME, RecorderNode, argv)


if __name__ == "__main__":
    sys.exit(main())
