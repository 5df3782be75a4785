"""Bags for import-bag tests, written with ``rosbags`` as ``ros2 bag record`` would write them,
and the bad-input corpus (each case builds its files in a temporary directory).

Good bags (:func:`demo_bag`): ``/joint_states`` (JointState, joints in message order
``elbow, shoulder, wrist``, 100 Hz), ``/ee_pose`` (PoseStamped, 50 Hz), ``/observation``
(Float64MultiArray, 20 Hz), ``/forward_command_controller/commands`` (Float64MultiArray, 20 Hz),
optionally episode markers on ``/smiling_ros/episode``. Every value is a known function of its
message's timestamp, so tests can recompute what the resampler must produce.
"""
from __future__ import annotations

import json
import math
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import yaml

from smiling_ros.io.bag import BagWriter, typestore

TS = typestore()
T = TS.types
T0 = 1_700_000_000_000_000_000  # bag epoch (ns)
JOINTS = ["elbow", "shoulder", "wrist"]
CMD = "/forward_command_controller/commands"
MARKERS = "/smiling_ros/episode"


# --------------------------------------------------------------------------- messages
def stamp(t_ns: int):
    return T["builtin_interfaces/msg/Time"](sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))


def header(t_ns: int, frame: str = "world"):
    return T["std_msgs/msg/Header"](stamp=stamp(t_ns), frame_id=frame)


def float_array(values, msgtype: str = "std_msgs/msg/Float64MultiArray"):
    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    dtype = np.float32 if "Float32" in msgtype else np.float64
    return T[msgtype](layout=layout, data=np.asarray(values, dtype=dtype))


def joint_state(t_ns: int, names, pos, vel=None, eff=None):
    return T["sensor_msgs/msg/JointState"](
        header=header(t_ns),
        name=list(names),
        position=np.asarray(pos, np.float64),
        velocity=np.asarray(vel if vel is not None else [], np.float64),
        effort=np.asarray(eff if eff is not None else [], np.float64),
    )


def pose_stamped(t_ns: int, xyz, quat_wxyz):
    w, x, y, z = quat_wxyz
    pose = T["geometry_msgs/msg/Pose"](
        position=T["geometry_msgs/msg/Point"](x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
        orientation=T["geometry_msgs/msg/Quaternion"](x=float(x), y=float(y), z=float(z), w=float(w)),
    )
    return T["geometry_msgs/msg/PoseStamped"](header=header(t_ns), pose=pose)


def string(text: str):
    return T["std_msgs/msg/String"](data=text)


def marker(event: str, episode: int, success: Optional[bool] = None):
    d = {"event": event, "episode": episode}
    if success is not None:
        d["success"] = success
    return string(json.dumps(d))


def write_bag(path: Path, messages: Iterable[tuple[str, int, object]], storage: str = "mcap",
              topics: Iterable[tuple[str, str]] = ()) -> Path:
    """Write ``(topic, t_ns, msg)`` into a new rosbag2 directory; ``topics`` adds (topic, type)
    connections up front (so a bag can list topics that have no messages)."""
    with BagWriter(path, storage) as w:
        for topic, msgtype in topics:
            w.add_topic(topic, msgtype)
        for topic, t, msg in messages:
            w.write_msg(topic, t, msg)
    return Path(path)


def storage_file(bag_dir: Path) -> Path:
    """The single .mcap/.db3 file inside a bag directory."""
    (f,) = [p for p in Path(bag_dir).iterdir() if p.suffix in (".mcap", ".db3")]
    return f


# --------------------------------------------------------------------------- signals
def js_pos(t: float) -> np.ndarray:
    """Joint positions (rad) in message order elbow, shoulder, wrist at time t (s)."""
    return np.array([math.sin(t), 0.5 * t, math.cos(2 * t)])


def js_vel(t: float) -> np.ndarray:
    return np.array([math.cos(t), 0.5, -2 * math.sin(2 * t)])


def ee_xyz(t: float) -> np.ndarray:
    return np.array([0.3 + 0.1 * t, -0.2, 0.05 * math.sin(t)])


def ee_yaw(t: float) -> float:
    return 0.4 * math.sin(0.5 * t)


def obs_vec(t: float) -> np.ndarray:
    return np.array([t, 2 * t, -t, 1.0])


def cmd_vec(t: float) -> np.ndarray:
    return np.array([math.sin(3 * t), math.cos(3 * t)])


def yaw_quat(yaw: float) -> tuple[float, float, float, float]:
    return (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))


@dataclass
class Rates:
    joint_states: float = 100.0
    ee_pose: float = 50.0
    observation: float = 20.0
    command: float = 20.0


def episode_messages(t_start_ns: int, seconds: float, rates: Rates = Rates(),
                     offsets_ns: tuple[int, int, int, int] = (0, 3_000_000, 1_000_000, 7_000_000)):
    """Messages of one episode starting at t_start_ns (values are functions of absolute bag time
    in seconds since T0). Offsets shift each topic's first message."""
    out = []
    specs = [
        ("/joint_states", rates.joint_states, offsets_ns[0],
         lambda t_ns, t: joint_state(t_ns, JOINTS, js_pos(t), js_vel(t), [0.0, 0.0, 0.0])),
        ("/ee_pose", rates.ee_pose, offsets_ns[1], lambda t_ns, t: pose_stamped(t_ns, ee_xyz(t), yaw_quat(ee_yaw(t)))),
        ("/observation", rates.observation, offsets_ns[2], lambda t_ns, t: float_array(obs_vec(t))),
        (CMD, rates.command, offsets_ns[3], lambda t_ns, t: float_array(cmd_vec(t))),
    ]
    for topic, rate, off, make in specs:
        if rate <= 0:
            continue
        n = int(seconds * rate)
        for k in range(n):
            t_ns = t_start_ns + off + int(round(k * 1e9 / rate))
            out.append((topic, t_ns, make(t_ns, (t_ns - T0) * 1e-9)))
    return out


def demo_bag(path: Path, storage: str = "mcap", episodes: int = 3, seconds: float = 2.0,
             pause_s: float = 1.5, markers: bool = False, actions: bool = True,
             success: Optional[list[bool]] = None, rates: Rates = Rates(), ballast: int = 0) -> dict:
    """A recording of ``episodes`` episodes of ``seconds`` each separated by ``pause_s`` of silence.
    ``ballast`` > 0 adds a 10 Hz ``/ballast`` topic of that many float64s per message (big bags:
    the MCAP writer closes a chunk every MiB). Returns {'path', 'starts_ns', 'ends_ns', 'messages'}."""
    msgs = []
    starts, ends = [], []
    t = T0 + 500_000_000
    for e in range(episodes):
        ep = episode_messages(t, seconds, rates)
        if not actions:
            ep = [m for m in ep if m[0] != CMD]
        if ballast:
            blob = float_array(np.zeros(ballast))
            ep += [("/ballast", t + k * 100_000_000 + 2_000_000, blob) for k in range(int(seconds * 10))]
        if markers:
            msgs.append((MARKERS, t - 1_000_000, marker("start", e)))
            end_t = max(m[1] for m in ep) + 1_000_000
            msgs.append((MARKERS, end_t, marker("end", e, None if success is None else success[e])))
        msgs += ep
        starts.append(t)
        ends.append(max(m[1] for m in ep))
        t = ends[-1] + int(pause_s * 1e9)
    msgs.sort(key=lambda m: m[1])
    write_bag(path, msgs, storage)
    return {"path": Path(path), "starts_ns": starts, "ends_ns": ends, "messages": msgs}


# --------------------------------------------------------------------------- configs
OBS_FIELDS = [
    {"topic": "/joint_states", "type": "sensor_msgs/msg/JointState", "field": "position", "joints": ["shoulder", "elbow"]},
    {"topic": "/joint_states", "type": "sensor_msgs/msg/JointState", "field": "velocity", "joints": ["shoulder", "elbow"]},
    {"topic": "/ee_pose", "type": "geometry_msgs/msg/PoseStamped", "field": "pose.position"},
    {"topic": "/ee_pose", "type": "geometry_msgs/msg/PoseStamped", "field": "pose.orientation", "orientation": "euler"},
    {"topic": "/observation", "type": "std_msgs/msg/Float64MultiArray", "field": "data", "indices": [0, 3]},
]
ACT_FIELDS = [{"topic": CMD, "type": "std_msgs/msg/Float64MultiArray", "field": "data", "size": 2}]


def config_dict(rate_hz: float = 20.0, gap_s: float = 0.5, min_steps: int = 3, observation=None, action=None,
                **extra) -> dict:
    d = {
        "task": {"env": ""},
        "rate_hz": rate_hz,
        "observation": observation if observation is not None else OBS_FIELDS,
        "action": action if action is not None else ACT_FIELDS,
        "import": {"gap_s": gap_s, "min_episode_steps": min_steps},
    }
    d.update(extra)
    return d


def write_config(path: Path, **kw) -> Path:
    raw = kw.pop("raw", None)
    Path(path).write_text(raw if raw is not None else yaml.safe_dump(config_dict(**kw), sort_keys=False))
    return Path(path)


def expected_obs(t: float, js_t: float, pose_t: float, obs_t: float) -> np.ndarray:
    """Observation vector of OBS_FIELDS given the times (s since T0) of the last message of each topic."""
    p, v = js_pos(js_t), js_vel(js_t)
    return np.concatenate([[p[1], p[0]], [v[1], v[0]], ee_xyz(pose_t), [0.0, 0.0, ee_yaw(pose_t)], obs_vec(obs_t)[[0, 3]]])


# --------------------------------------------------------------------------- corrupting
def corrupt_bytes(path: Path, offset_frac: float = 0.5, length: int = 64, seed: int = 0) -> None:
    data = bytearray(Path(path).read_bytes())
    rng = np.random.default_rng(seed)
    start = int(len(data) * offset_frac)
    for i in range(start, min(len(data), start + length)):
        data[i] = int(rng.integers(0, 256))
    Path(path).write_bytes(bytes(data))


def truncate(path: Path, frac: float = 0.5) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * frac)])


# --------------------------------------------------------------------------- the corpus
@dataclass
class Case:
    """A bad input: ``build(tmp)`` returns the CLI arguments after ``import-bag``; the error line
    must contain every string in ``expect`` (case-insensitive; ``a|b`` accepts either)."""

    name: str
    build: Callable[[Path], list[str]]
    expect: tuple[str, ...]


def _std(tmp: Path, storage: str = "mcap", cfg_kw: Optional[dict] = None, bag_kw: Optional[dict] = None) -> tuple[Path, Path]:
    bag = demo_bag(tmp / "bag", storage, episodes=2, seconds=1.0, **(bag_kw or {}))["path"]
    cfg = write_config(tmp / "cfg.yaml", **(cfg_kw or {}))
    return bag, cfg


def _args(bag, cfg, tmp, *extra) -> list[str]:
    return [str(bag), "--config", str(cfg), "--out", str(tmp / "out"), "--no-progress", *extra]


def _mod_messages(tmp: Path, fn: Callable[[str, int, object], Optional[object]], storage: str = "mcap") -> list[str]:
    """A demo bag whose messages go through fn (return a replacement message, or None to keep)."""
    base = demo_bag(tmp / "orig", storage, episodes=2, seconds=1.0)
    shutil.rmtree(tmp / "orig")
    msgs = [(tp, t, fn(tp, t, m) or m) for tp, t, m in base["messages"]]
    write_bag(tmp / "bag", msgs, storage)
    return _args(tmp / "bag", write_config(tmp / "cfg.yaml"), tmp)


def _nth(topic: str, n: int, make: Callable[[int], object]):
    count = {"k": 0}

    def fn(tp, t, m):
        if tp != topic:
            return None
        count["k"] += 1
        return make(t) if count["k"] == n else None

    return fn


def _case_missing_path(tmp):
    return _args(tmp / "nope.mcap", write_config(tmp / "cfg.yaml"), tmp)


def _case_dir_without_metadata(tmp):
    (tmp / "bag").mkdir()
    (tmp / "bag" / "notes.txt").write_text("not a bag")
    return _args(tmp / "bag", write_config(tmp / "cfg.yaml"), tmp)


def _case_truncated_mcap_file(tmp):
    bag, cfg = _std(tmp)
    f = storage_file(bag)
    truncate(f, 0.6)
    return _args(f, cfg, tmp)


def _case_truncated_mcap_dir(tmp):
    bag, cfg = _std(tmp)
    truncate(storage_file(bag), 0.3)
    return _args(bag, cfg, tmp)


def _case_truncated_mcap_header(tmp):
    bag, cfg = _std(tmp)
    f = storage_file(bag)
    f.write_bytes(f.read_bytes()[:12])
    return _args(f, cfg, tmp)


def _case_corrupt_mcap_chunk(tmp):
    bag, cfg = _std(tmp)
    corrupt_bytes(storage_file(bag), 0.3, 200)
    return _args(bag, cfg, tmp)


def _case_bad_magic_mcap(tmp):
    bag, cfg = _std(tmp)
    f = storage_file(bag)
    data = bytearray(f.read_bytes())
    data[:8] = b"NOTMCAP!"
    f.write_bytes(bytes(data))
    return _args(f, cfg, tmp)


def _case_corrupt_sqlite_pages(tmp):
    bag, cfg = _std(tmp, "sqlite3")
    f = storage_file(bag)
    data = bytearray(f.read_bytes())
    for i in range(100, len(data)):  # keep the 100-byte header, destroy every page
        data[i] = (i * 131 + 7) % 256
    f.write_bytes(bytes(data))
    return _args(f, cfg, tmp)


def _case_corrupt_sqlite_header(tmp):
    bag, cfg = _std(tmp, "sqlite3")
    f = storage_file(bag)
    data = bytearray(f.read_bytes())
    data[:16] = b"\0" * 16
    f.write_bytes(bytes(data))
    return _args(bag, cfg, tmp)


def _case_truncated_sqlite(tmp):
    bag, cfg = _std(tmp, "sqlite3")
    truncate(storage_file(bag), 0.4)
    return _args(storage_file(bag), cfg, tmp)


def _case_sqlite_without_tables(tmp):
    f = tmp / "other.db3"
    con = sqlite3.connect(f)
    con.execute("CREATE TABLE x (a INTEGER)")
    con.commit()
    con.close()
    return _args(f, write_config(tmp / "cfg.yaml"), tmp)


def _case_empty_bag(storage):
    def build(tmp):
        write_bag(tmp / "bag", [], storage, topics=[("/observation", "std_msgs/msg/Float64MultiArray")])
        return _args(tmp / "bag", write_config(tmp / "cfg.yaml"), tmp)

    return build


def _case_no_topics(tmp):
    write_bag(tmp / "bag", [], "mcap")
    return _args(storage_file(tmp / "bag"), write_config(tmp / "cfg.yaml"), tmp)


def _case_empty_file(tmp):
    (tmp / "x.mcap").write_bytes(b"")
    return _args(tmp / "x.mcap", write_config(tmp / "cfg.yaml"), tmp)


def _case_unknown_storage(tmp):
    (tmp / "bag.txt").write_text("hello, this is not a bag\n")
    return _args(tmp / "bag.txt", write_config(tmp / "cfg.yaml"), tmp)


def _case_ros1_bag(tmp):
    (tmp / "old.bag").write_bytes(b"#ROSBAG V2.0\n" + b"\0" * 64)
    return _args(tmp / "old.bag", write_config(tmp / "cfg.yaml"), tmp)


def _case_metadata_unknown_storage(tmp):
    bag, cfg = _std(tmp)
    meta = bag / "metadata.yaml"
    meta.write_text(meta.read_text().replace("storage_identifier: mcap", "storage_identifier: hdf5"))
    return _args(bag, cfg, tmp)


def _case_metadata_corrupt(tmp):
    bag, cfg = _std(tmp)
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: [unclosed\n  : :")
    return _args(bag, cfg, tmp)


def _case_metadata_missing_file(tmp):
    bag, cfg = _std(tmp)
    storage_file(bag).unlink()
    return _args(bag, cfg, tmp)


def _case_missing_obs_topic(tmp):
    obs = [{"topic": "/camera/depth", "type": "std_msgs/msg/Float64MultiArray", "field": "data"}]
    bag, cfg = _std(tmp, cfg_kw={"observation": obs})
    return _args(bag, cfg, tmp)


def _case_missing_actions_required(tmp):
    bag, cfg = _std(tmp, bag_kw={"actions": False})
    return _args(bag, cfg, tmp, "--require-actions")


def _case_partial_actions(tmp):
    act = ACT_FIELDS + [{"topic": "/gripper/commands", "type": "std_msgs/msg/Float64MultiArray", "field": "data"}]
    bag, cfg = _std(tmp, cfg_kw={"action": act})
    return _args(bag, cfg, tmp)


def _case_wrong_type(tmp):
    obs = [{"topic": "/joint_states", "type": "std_msgs/msg/Float64MultiArray", "field": "data"}]
    bag, cfg = _std(tmp, cfg_kw={"observation": obs})
    return _args(bag, cfg, tmp)


def _case_wrong_field(tmp):
    obs = [{"topic": "/ee_pose", "type": "geometry_msgs/msg/PoseStamped", "field": "pose.velocity"}]
    bag, cfg = _std(tmp, cfg_kw={"observation": obs})
    return _args(bag, cfg, tmp)


def _case_non_numeric_field(tmp):
    obs = [{"topic": "/ee_pose", "field": "header.frame_id"}]
    bag, cfg = _std(tmp, cfg_kw={"observation": obs})
    return _args(bag, cfg, tmp)


def _case_missing_joint(tmp):
    obs = [{"topic": "/joint_states", "type": "sensor_msgs/msg/JointState", "field": "position", "joints": ["shoulder", "gripper"]}]
    bag, cfg = _std(tmp, cfg_kw={"observation": obs})
    return _args(bag, cfg, tmp)


def _case_index_out_of_range(tmp):
    obs = [{"topic": "/observation", "field": "data", "indices": [0, 9]}]
    bag, cfg = _std(tmp, cfg_kw={"observation": obs})
    return _args(bag, cfg, tmp)


def _case_size_mismatch(tmp):
    obs = [{"topic": "/observation", "field": "data", "size": 5}]
    bag, cfg = _std(tmp, cfg_kw={"observation": obs})
    return _args(bag, cfg, tmp)


def _case_nan(tmp):
    return _mod_messages(tmp, _nth("/observation", 7, lambda t: float_array([np.nan, 0, 0, 1.0])))


def _case_inf_action(tmp):
    return _mod_messages(tmp, _nth(CMD, 4, lambda t: float_array([np.inf, 0.0])))


def _case_nan_joint(tmp):
    return _mod_messages(tmp, _nth("/joint_states", 30, lambda t: joint_state(t, JOINTS, [0, np.nan, 0], [0, 0, 0])))


def _case_huge(tmp):
    return _mod_messages(tmp, _nth("/observation", 5, lambda t: float_array([1e20, 0, 0, 1.0])))


def _case_huge_sqlite(tmp):
    return _mod_messages(tmp, _nth(CMD, 9, lambda t: float_array([0.0, -3e15])), storage="sqlite3")


def _case_dim_change(tmp):
    args = _mod_messages(tmp, _nth(CMD, 10, lambda t: float_array([0.0, 1.0, 2.0])))
    write_config(tmp / "cfg.yaml", action=[{"topic": CMD, "field": "data"}])
    return args


def _case_dim_change_obs(tmp):
    def fn(tp, t, m):
        if tp == "/observation" and t > T0 + 1_000_000_000:
            return float_array([1.0, 2.0, 3.0, 4.0, 5.0])
        return None

    return _mod_messages(tmp, fn, storage="sqlite3")


def _case_joint_count_change(tmp):
    args = _mod_messages(tmp, _nth("/joint_states", 12, lambda t: joint_state(t, ["elbow", "shoulder"], [0, 0], [0, 0])))
    write_config(tmp / "cfg.yaml", observation=[{"topic": "/joint_states", "field": "position"}])
    return args


def _case_bad_marker(tmp):
    bag = demo_bag(tmp / "orig", episodes=1, seconds=1.0)
    msgs = list(bag["messages"]) + [(MARKERS, T0 + 600_000_000, string("episode 1 begins"))]
    shutil.rmtree(tmp / "orig")
    msgs.sort(key=lambda m: m[1])
    write_bag(tmp / "bag", msgs)
    return _args(tmp / "bag", write_config(tmp / "cfg.yaml"), tmp)


def _case_marker_wrong_type(tmp):
    bag = demo_bag(tmp / "orig", episodes=1, seconds=1.0)
    msgs = list(bag["messages"]) + [(MARKERS, T0 + 600_000_000, float_array([1.0]))]
    shutil.rmtree(tmp / "orig")
    msgs.sort(key=lambda m: m[1])
    write_bag(tmp / "bag", msgs)
    return _args(tmp / "bag", write_config(tmp / "cfg.yaml"), tmp)


def _case_corrupt_message(tmp):
    bag, cfg = _std(tmp, "sqlite3")
    con = sqlite3.connect(storage_file(bag))
    con.execute("UPDATE messages SET data = x'0001000003000000ffffffff' WHERE id = 5")
    con.commit()
    con.close()
    return _args(bag, cfg, tmp)


def _case_too_short(tmp):
    bag, cfg = _std(tmp, cfg_kw={"min_steps": 500})
    return _args(bag, cfg, tmp)


def _case_cfg_unknown_key(tmp):
    bag, cfg = _std(tmp, cfg_kw={"rate_hertz": 10})
    return _args(bag, cfg, tmp)


def _case_cfg_unknown_field_key(tmp):
    obs = [{"topic": "/observation", "field": "data", "joint": ["a"]}]
    bag, cfg = _std(tmp, cfg_kw={"observation": obs})
    return _args(bag, cfg, tmp)


def _case_cfg_wrong_type(tmp):
    bag, cfg = _std(tmp, cfg_kw={"rate_hz": "fast"})
    return _args(bag, cfg, tmp)


def _case_cfg_wrong_type_indices(tmp):
    obs = [{"topic": "/observation", "field": "data", "indices": "0:2"}]
    bag, cfg = _std(tmp, cfg_kw={"observation": obs})
    return _args(bag, cfg, tmp)


def _case_cfg_negative_rate(tmp):
    bag, cfg = _std(tmp, cfg_kw={"rate_hz": -20.0})
    return _args(bag, cfg, tmp)


def _case_cfg_negative_gap(tmp):
    bag, cfg = _std(tmp, cfg_kw={"gap_s": -1.0})
    return _args(bag, cfg, tmp)


def _case_cfg_bad_yaml(tmp):
    bag, _ = _std(tmp)
    cfg = write_config(tmp / "cfg.yaml", raw="rate_hz: 20\nobservation: [ {topic: /observation\n")
    return _args(bag, cfg, tmp)


def _case_cfg_missing(tmp):
    bag, _ = _std(tmp)
    return _args(bag, tmp / "nope.yaml", tmp)


def _case_cfg_relative_topic(tmp):
    bag, cfg = _std(tmp, cfg_kw={"observation": [{"topic": "observation", "field": "data"}]})
    return _args(bag, cfg, tmp)


def _case_cli_negative_rate(tmp):
    bag, cfg = _std(tmp)
    return _args(bag, cfg, tmp, "--rate", "-5")


def _case_cli_zero_rate(tmp):
    bag, cfg = _std(tmp)
    return _args(bag, cfg, tmp, "--rate", "0")


def _case_cli_nan_rate(tmp):
    bag, cfg = _std(tmp)
    return _args(bag, cfg, tmp, "--rate", "nan")


def _case_cli_text_rate(tmp):
    bag, cfg = _std(tmp)
    return _args(bag, cfg, tmp, "--rate", "fast")


def _case_cli_negative_gap(tmp):
    bag, cfg = _std(tmp)
    return _args(bag, cfg, tmp, "--gap", "-0.5")


def _case_cli_absurd_rate(tmp):
    bag, cfg = _std(tmp)
    return _args(bag, cfg, tmp, "--rate", "1e9")


def _case_out_not_dataset(tmp):
    bag, cfg = _std(tmp)
    (tmp / "out").mkdir()
    (tmp / "out" / "precious.txt").write_text("keep me")
    return _args(bag, cfg, tmp)


CORPUS: list[Case] = [
    Case("missing_path", _case_missing_path, ("nope.mcap", "not found")),
    Case("dir_without_metadata", _case_dir_without_metadata, ("no metadata.yaml",)),
    Case("truncated_mcap_file", _case_truncated_mcap_file, ("truncated", "mcap")),
    Case("truncated_mcap_dir", _case_truncated_mcap_dir, ("truncated", "mcap")),
    Case("truncated_mcap_header", _case_truncated_mcap_header, ("mcap",)),
    Case("corrupt_mcap_chunk", _case_corrupt_mcap_chunk, ("corrupt mcap|cannot decode",)),
    Case("bad_magic_mcap", _case_bad_magic_mcap, ("mcap", "magic")),
    Case("corrupt_sqlite_pages", _case_corrupt_sqlite_pages, ("sqlite3",)),
    Case("corrupt_sqlite_header", _case_corrupt_sqlite_header, ("sqlite3",)),
    Case("truncated_sqlite", _case_truncated_sqlite, ("sqlite3",)),
    Case("sqlite_without_tables", _case_sqlite_without_tables, ("sqlite3",)),
    Case("empty_bag_mcap", _case_empty_bag("mcap"), ("empty",)),
    Case("empty_bag_sqlite3", _case_empty_bag("sqlite3"), ("empty",)),
    Case("bag_without_topics", _case_no_topics, ("empty",)),
    Case("empty_file", _case_empty_file, ("empty",)),
    Case("unknown_storage", _case_unknown_storage, ("unknown storage",)),
    Case("ros1_bag", _case_ros1_bag, ("ros 1",)),
    Case("metadata_unknown_storage", _case_metadata_unknown_storage, ("unknown storage", "hdf5")),
    Case("metadata_corrupt", _case_metadata_corrupt, ("metadata.yaml",)),
    Case("metadata_missing_file", _case_metadata_missing_file, ("missing",)),
    Case("missing_obs_topic", _case_missing_obs_topic, ("/camera/depth", "not in bag", "/joint_states")),
    Case("missing_actions_required", _case_missing_actions_required, (CMD, "not in bag")),
    Case("partial_actions", _case_partial_actions, ("/gripper/commands", "not in bag")),
    Case("wrong_message_type", _case_wrong_type, ("/joint_states", "sensor_msgs/msg/JointState", "Float64MultiArray")),
    Case("wrong_field", _case_wrong_field, ("/ee_pose", "pose.velocity")),
    Case("non_numeric_field", _case_non_numeric_field, ("header.frame_id", "not numeric")),
    Case("missing_joint", _case_missing_joint, ("gripper", "/joint_states")),
    Case("index_out_of_range", _case_index_out_of_range, ("index 9", "/observation")),
    Case("size_mismatch", _case_size_mismatch, ("size 5", "/observation")),
    Case("nan_observation", _case_nan, ("nan", "/observation", "into the bag")),
    Case("inf_action", _case_inf_action, ("inf", CMD)),
    Case("nan_joint_state", _case_nan_joint, ("nan", "/joint_states")),
    Case("huge_value", _case_huge, ("1e+20", "/observation")),
    Case("huge_value_sqlite3", _case_huge_sqlite, ("-3e+15", CMD)),
    Case("dimension_change_action", _case_dim_change, ("dimension changed from 2 to 3", CMD)),
    Case("dimension_change_obs", _case_dim_change_obs, ("/observation", "dimension changed from 4 to 5")),
    Case("joint_count_change", _case_joint_count_change, ("/joint_states", "dimension changed from 3 to 2")),
    Case("bad_marker", _case_bad_marker, (MARKERS, "json")),
    Case("marker_wrong_type", _case_marker_wrong_type, (MARKERS, "std_msgs/msg/String")),
    Case("corrupt_message_bytes", _case_corrupt_message, ("cannot decode",)),
    Case("only_short_episodes", _case_too_short, ("no complete episode", "shorter than 500")),
    Case("config_unknown_key", _case_cfg_unknown_key, ("rate_hertz", "unknown key")),
    Case("config_unknown_field_key", _case_cfg_unknown_field_key, ("joint", "unknown key")),
    Case("config_wrong_type", _case_cfg_wrong_type, ("rate_hz", "number")),
    Case("config_wrong_type_indices", _case_cfg_wrong_type_indices, ("indices", "list")),
    Case("config_negative_rate", _case_cfg_negative_rate, ("rate_hz", "> 0")),
    Case("config_negative_gap", _case_cfg_negative_gap, ("gap_s", "> 0")),
    Case("config_bad_yaml", _case_cfg_bad_yaml, ("cfg.yaml", "yaml")),
    Case("config_missing", _case_cfg_missing, ("nope.yaml", "not found")),
    Case("config_relative_topic", _case_cfg_relative_topic, ("topic", "absolute")),
    Case("cli_negative_rate", _case_cli_negative_rate, ("--rate", "-5")),
    Case("cli_zero_rate", _case_cli_zero_rate, ("--rate",)),
    Case("cli_nan_rate", _case_cli_nan_rate, ("--rate",)),
    Case("cli_text_rate", _case_cli_text_rate, ("--rate", "fast")),
    Case("cli_negative_gap", _case_cli_negative_gap, ("--gap",)),
    Case("cli_absurd_rate", _case_cli_absurd_rate, ("rows", "lower --rate")),
    Case("out_not_a_dataset", _case_out_not_dataset, ("refusing",)),
]


def error_matches(line: str, expect: tuple[str, ...]) -> bool:
    low = line.lower()
    return all(any(alt.lower() in low for alt in e.split("|")) for e in expect)


def leftovers(tmp: Path) -> list[str]:
    """Output the import must not leave behind after a failure: the out dir or temp siblings."""
    return sorted(p.name for p in tmp.iterdir() if p.name == "out" or p.name.startswith(".out."))

