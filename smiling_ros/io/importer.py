"""rosbag2 recording -> dataset (ROS-free; the engine behind ``smiling-ros import-bag``).

Pipeline:

1. Open the bag (:func:`smiling_ros.io.bag.open_bag`), check that every configured
   observation topic is there with the configured type; action topics are optional (all absent:
   a state-only dataset).
2. Stream the needed topics in receive-time order; each message goes through a
   :class:`~smiling_ros.io.fields.VectorAssembler` (one for observations, one for actions),
   which extracts its fields. Every field keeps its own time series ``(t_ns, value)``. NaN/inf,
   values beyond ``import.max_abs`` and dimension changes stop the import with one line naming
   topic, field and time.
3. Episodes are time intervals ``[a, b]`` (bag receive time, ns), cut by the first rule that
   finds something, in this order of preference (:mod:`smiling_ros.data.episodes`): episode
   markers on ``topics.episode``; silence of the action topics while the state stream goes on
   (``import.command_silence_s``); the robot at rest (``import.idle_joints``, ``idle_velocity``,
   ``idle_s``); gaps in the state stream (``gap_s``). Gaps always cut as well: an episode never
   bridges a dropout by holding stale values. Every episode records which rules cut it
   (``meta['episodes'][i]['cut_by']``), and ``meta['episode_rules']`` what each rule found. An
   episode much longer than the others (or than ``import.max_episode_s``) gets a warning naming
   the rules tried.
4. Observation fields are aligned by the controller's rules: every message goes through the
   :class:`~smiling_ros.io.fields.VectorAssembler` the controller uses (header stamps or receive
   time per field, a stamp that does not advance is not new), and at each grid point a field
   (``align: asof``) whose latest sample is older than its maximum age (``max_age_s``, else
   ``import.stale_periods`` periods of its topic's rate in this bag, at least that many dataset
   periods) drops the step: the episode is split there (:func:`step_faults`,
   :func:`split_valid`). ``align: hold`` fields take their latest sample whatever its age, also
   one from before the episode.
   Each episode is resampled on a fixed grid by zero-order hold (:func:`zoh`): the episode becomes
   *ready* at the first time every field (observations and actions) has a message inside it; grid
   points are ``ready + (k + phase) / rate`` for ``k = 0, 1, ...`` up to ``b``, and each field
   takes its last message at or before the grid point. ``phase = 0.5`` puts the grid half a period
   after the ready time, i.e. between message arrivals when the recording rate equals the dataset
   rate, so receive-time jitter does not duplicate or skip samples.
   ``obs[k]`` and ``act[k]`` are the values held at grid point ``k``; ``act[k]`` is therefore the
   last command sent at or before the moment ``obs[k]`` was current.
5. Episodes shorter than ``import.min_episode_steps`` are dropped (counted in the metadata).
6. Data checks (:mod:`smiling_ros.data.checks`) log named warnings and store them in
   ``meta['warnings']``: observation columns echoing an action column, constant columns,
   header stamps / receive times going backwards or repeating, topics slower than the dataset.
   ``meta['topic_rates_hz']`` holds each topic's rate found in the bag and ``meta['action_spec']``
   the command's joints and meaning (config ``command:``). The dataset is written atomically
   (:meth:`smiling_ros.data.dataset.Dataset.save`).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from smiling_ros.config import Config, FieldSpec
from smiling_ros.errors import UserError
from smiling_ros.io.fields import VectorAssembler, header_stamp_ns, normalize_msgtype

if TYPE_CHECKING:
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.data.episodes import Interval

PHASE = 0.5  # grid offset after the ready time, in periods
MAX_ROWS = 50_000_000  # dataset rows an import may produce (guards against absurd rates/stamps)


# --------------------------------------------------------------------------- pure resampling
def zoh(times: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Zero-order hold: for each grid time, the value of the last sample at or before it.

    times: (M,) int64 non-decreasing; values: (M, D); grid: (K,) with ``grid >= times[0]``.
    Among samples with equal times the later one wins. Returns (K, D).
    """
    idx = np.searchsorted(times, grid, side="right") - 1
    if len(idx) and idx.min() < 0:
        raise ValueError("zoh: grid point before the first sample")
    return values[idx]


def grid_times(ready_ns: int, end_ns: int, period_ns: float, phase: float = PHASE) -> np.ndarray:
    """Grid ``ready + (k + phase) * period`` (ns, int64) for every k with the point <= end_ns."""
    span = end_ns - ready_ns - phase * period_ns
    if span < 0:
        return np.zeros(0, dtype=np.int64)
    k = np.arange(int(math.floor(span / period_ns + 1e-9)) + 1, dtype=np.float64)
    grid = ready_ns + np.round((k + phase) * period_ns).astype(np.int64)
    return grid[grid <= end_ns]


@dataclasses.dataclass
class Series:
    """Growable time series of one field: ``times`` (M,) int64 ns, ``values`` (M, D) float64,
    and ``aux`` (M,) int64 per sample (the observation fields' header lag, ns)."""

    capacity: int = 1024
    n: int = 0
    times: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    values: Optional[np.ndarray] = None
    aux: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def append(self, t: int, v: np.ndarray, aux: int = 0) -> None:
        if self.values is None:
            cap = max(self.capacity, 16)
            self.times = np.zeros(cap, np.int64)
            self.aux = np.zeros(cap, np.int64)
            self.values = np.zeros((cap, len(v)), np.float64)
        elif self.n == len(self.times):
            cap = 2 * len(self.times)
            self.times = np.resize(self.times, cap)
            self.aux = np.resize(self.aux, cap)
            self.values = np.concatenate([self.values, np.zeros_like(self.values)])
        self.times[self.n] = t
        self.aux[self.n] = aux
        self.values[self.n] = v
        self.n += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        t, v, _ = self.arrays_aux()
        return t, v

    def arrays_aux(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times, values, aux), sorted by time (stable)."""
        if self.values is None:
            return np.zeros(0, np.int64), np.zeros((0, 0)), np.zeros(0, np.int64)
        t, v, a = self.times[: self.n], self.values[: self.n], self.aux[: self.n]
        if self.n > 1 and np.any(np.diff(t) < 0):  # merged split files may interleave
            order = np.argsort(t, kind="stable")
            t, v, a = t[order], v[order], a[order]
        return t, v, a


@dataclasses.dataclass
class ResampledEpisode:
    interval: Interval
    grid: np.ndarray  # (K,) int64 ns
    obs: np.ndarray  # (K, obs_dim)
    act: Optional[np.ndarray]  # (K, act_dim)


def resample_episode(
    interval: Interval,
    obs_series: Sequence[tuple[np.ndarray, np.ndarray]],
    act_series: Optional[Sequence[tuple[np.ndarray, np.ndarray]]],
    period_ns: float,
    phase: float = PHASE,
    hold: Sequence[bool] = (),
) -> Optional[ResampledEpisode]:
    """ZOH-resample one interval; None when some field has no message inside it (observation
    fields flagged in ``hold`` may also use their last message before it)."""
    fields = list(obs_series) + list(act_series or [])
    ready = interval.start_ns
    for k, (t, _) in enumerate(fields):
        if k < len(hold) and hold[k] and len(t) and t[0] <= interval.start_ns:
            continue
        lo = int(np.searchsorted(t, interval.start_ns, side="left"))
        if lo >= len(t) or t[lo] > interval.end_ns:
            return None
        ready = max(ready, int(t[lo]))
    grid = grid_times(ready, interval.end_ns, period_ns, phase)
    if len(grid) == 0:
        return ResampledEpisode(interval, grid, np.zeros((0, 0)), None)
    obs = np.concatenate([zoh(t, v, grid) for t, v in obs_series], axis=1)
    act = None if act_series is None else np.concatenate([zoh(t, v, grid) for t, v in act_series], axis=1)
    return ResampledEpisode(interval, grid, obs, act)


def step_faults(grid: np.ndarray, arrays: Sequence[tuple[np.ndarray, np.ndarray]], lags: Sequence[np.ndarray],
                limits: Sequence[Optional[int]], errors: Sequence[np.ndarray]) -> np.ndarray:
    """Which observation fields may not be used at each grid time: (K, n_fields) bool.

    The same rules as :meth:`smiling_ros.io.fields.VectorAssembler.faults` in the controller,
    evaluated on the samples the assembler accepted during the import: field ``i`` is at fault at
    ``g`` when its latest sample received at or before ``g`` is older than ``limits[i]`` ns (its
    age counts from the receive time less the header lag ``lags[i]``, i.e. from the assembler's
    sample time) or when a message with an implausible header stamp (``errors[i]``: receive
    times) arrived after that sample.
    """
    out = np.zeros((len(grid), len(arrays)), bool)
    for i, ((t, _), lag, limit, err) in enumerate(zip(arrays, lags, limits, errors)):
        idx = np.searchsorted(t, grid, side="right") - 1
        if limit is not None:
            out[:, i] |= grid - (t[idx] - lag[idx]) > limit
        if len(err):
            e = np.searchsorted(err, grid, side="right") - 1
            out[:, i] |= (e >= 0) & (err[np.maximum(e, 0)] > t[idx])
    return out


def split_valid(ep: ResampledEpisode, bad: np.ndarray) -> list[ResampledEpisode]:
    """The runs of steps of ``ep`` where ``bad`` (K,) is False, as episodes cut by ``stale``."""
    from smiling_ros.data.episodes import Interval

    if not bad.any():
        return [ep]
    edges = np.diff(np.concatenate([[1], bad.astype(np.int8), [1]]))
    out = []
    for a, b in zip(np.nonzero(edges == -1)[0], np.nonzero(edges == 1)[0]):
        iv = ep.interval
        piece = Interval(int(ep.grid[a]), int(ep.grid[b - 1]), iv.episode, iv.success,
                         start_by=iv.start_by if a == 0 else "stale", end_by=iv.end_by if b == len(bad) else "stale")
        out.append(ResampledEpisode(piece, ep.grid[a:b], ep.obs[a:b], None if ep.act is None else ep.act[a:b]))
    return out


def first_bad_value(
    specs: Sequence[FieldSpec], arrays: Sequence[tuple[np.ndarray, np.ndarray]], max_abs: float
) -> Optional[tuple[FieldSpec, int, int, float]]:
    """The earliest (spec, t_ns, element, value) that is NaN/inf or beyond ``max_abs``; None if none."""
    best = None
    for spec, (t, v) in zip(specs, arrays):
        if v.size == 0:
            continue
        ok = np.abs(v) <= max_abs  # False for NaN too
        if ok.all():
            continue
        row = int(np.argmax(~ok.all(axis=1)))
        if best is None or t[row] < best[1]:
            k = int(np.argmax(~ok[row]))
            best = (spec, int(t[row]), k, float(v[row, k]))
    return best


# --------------------------------------------------------------------------- import
def _positive(value: Optional[float], what: str) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{what}: must be a positive number, got {value!r}")


def check_out_dir(out: Path) -> None:
    """Refuse to replace anything but a previous dataset (Dataset.save replaces the directory)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory (choose another --out)")
    if any(out.iterdir()) and not (out / "meta.json").exists():
        raise UserError(f"{out}: exists and is not a dataset; refusing to overwrite it (choose another --out)")
    if (out / "meta.json").exists():
        from smiling_ros.data.dataset import FORMAT  # imports torch: only when there is something to check
        from smiling_ros.io.inputs import load_json_file

        try:
            fmt = load_json_file(out / "meta.json", "dataset metadata").get("format")
        except (UserError, AttributeError):
            fmt = None
        if fmt != FORMAT:
            raise UserError(f"{out}: exists and is not a smiling_ros dataset; refusing to overwrite it")


def _spec_dict(spec: FieldSpec) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(spec).items() if v is not None}


def _check_topics(reader, specs: list[FieldSpec], role: str, bag: str) -> tuple[dict[str, str], list[str]]:
    """(topic -> bag type for specs present, topics missing). Wrong type is an error."""
    types: dict[str, str] = {}
    missing: list[str] = []
    for spec in specs:
        t = reader.topics.get(spec.topic)
        if t is None or t.count == 0:
            if spec.topic not in missing:
                missing.append(spec.topic)
            continue
        if "|" in t.msgtype:
            raise UserError(f"{bag}: topic '{spec.topic}' carries several message types ({t.msgtype})")
        want = normalize_msgtype(spec.type)
        if want and want != t.msgtype:
            raise UserError(
                f"{bag}: {role} topic '{spec.topic}' has type {t.msgtype} in the bag, config expects {want}"
            )
        if not reader.knows_type(t.msgtype):
            raise UserError(
                f"{bag}: topic '{spec.topic}': message type {t.msgtype} is unknown "
                "(the bag carries no definition for it)"
            )
        types[spec.topic] = t.msgtype
    return types, missing


class IdleSignal:
    """Collects the speed of the ``import.idle_joints`` (velocity where the JointState carries it,
    else position, differentiated later by :func:`smiling_ros.data.episodes.joint_speeds`)."""

    def __init__(self, topic: str, joints: list[str]):
        from smiling_ros.io.fields import JOINT_STATE

        self.topic = topic
        self.joints = joints
        self.vel_spec = FieldSpec(topic=topic, type=JOINT_STATE, field="velocity", joints=joints)
        self.pos_spec = FieldSpec(topic=topic, type=JOINT_STATE, field="position", joints=joints)
        self.times: list[int] = []
        self.vel: list[np.ndarray] = []
        self.pos: list[np.ndarray] = []

    def add(self, msg: Any, stamp: int, msgtype: str) -> None:
        from smiling_ros.io.fields import extract

        try:
            vel = getattr(msg, "velocity", None)
            if vel is not None and len(vel):
                self.vel.append(extract(self.vel_spec, msg, msgtype))
            else:
                self.pos.append(extract(self.pos_spec, msg, msgtype))
        except UserError as exc:
            raise UserError(f"import.idle_joints: {exc}") from None
        self.times.append(stamp)

    def speeds(self) -> tuple[np.ndarray, np.ndarray]:
        from smiling_ros.data.episodes import joint_speeds

        t = np.asarray(self.times, np.int64)
        if self.vel and self.pos:  # mixed: velocity where present, position differences elsewhere
            raise UserError(f"topic '{self.topic}': some JointState messages carry velocities and some do not "
                            "(import.idle_joints needs one or the other)")
        vel = np.asarray(self.vel) if self.vel else None
        pos = np.asarray(self.pos) if self.pos else None
        return t, joint_speeds(t, vel, pos)


def action_spec(cfg: Config, act_names: list[str], act_dim: int) -> dict[str, Any]:
    """What the action means, for datasets and checkpoints: the command's joints (in the
    controller's order), its meaning, interface and topic, and the element names. A
    ``command.joints`` list of another length than the action is an error."""
    joints = list(cfg.command.joints)
    if joints and act_dim and len(joints) != act_dim:
        raise UserError(f"{cfg.path or 'config'}: command.joints lists {len(joints)} joints but the action has "
                        f"{act_dim} elements")
    return {
        "joints": joints,
        "meaning": cfg.command.meaning,
        "interface": cfg.command.interface,
        "topic": cfg.command_topic,
        "names": act_names,
    }


def import_bag(
    bag_path: str | Path,
    cfg: Config,
    out_dir: str | Path,
    rate_hz: Optional[float] = None,
    progress: bool = True,
    gap_s: Optional[float] = None,
    require_actions: bool = False,
    salvage: bool = False,
    log: Callable[[str], None] = print,
) -> Dataset:
    """Turn a rosbag2 recording into a dataset directory at ``out_dir`` (see the module docstring).

    rate_hz: dataset rate (default ``cfg.rate_hz``). gap_s: state-gap threshold (default
    ``cfg.import_.gap_s``). require_actions: a bag without the action topics is an error instead
    of a state-only dataset. salvage: read the complete part of a truncated MCAP. log: where notes
    and warnings go (one line each). Returns the saved dataset; ``meta['import']`` holds the
    summary (episodes kept/dropped, seconds taken), ``meta['warnings']`` the data checks'
    findings (:mod:`smiling_ros.data.checks`).
    """
    from smiling_ros.data import checks
    from smiling_ros.data.episodes import (
        JOY_TYPE,
        MARKER_TYPE,
        JoyButtons,
        Takes,
        long_episode_warning,
        parse_marker,
        segment,
        state_intervals,
    )
    from smiling_ros.io.bag import open_bag

    t_start = time.perf_counter()
    _positive(rate_hz, "--rate")
    _positive(gap_s, "--gap")
    rate = float(rate_hz if rate_hz is not None else cfg.rate_hz)
    gap = float(gap_s if gap_s is not None else cfg.import_.gap_s)
    _positive(rate, "rate_hz")
    _positive(gap, "gap_s")
    period_ns = 1e9 / rate
    gap_ns = int(round(gap * 1e9))
    out = Path(out_dir)
    check_out_dir(out)
    bag = str(bag_path)
    if not cfg.observation:
        raise UserError(f"{cfg.path or 'config'}: 'observation' must list at least one field")
    isec = cfg.import_

    with open_bag(bag_path, salvage=salvage) as reader:
        if reader.salvaged_bytes:
            log(f"note: {bag}: truncated MCAP, dropped the last {reader.salvaged_bytes} bytes (incomplete records)")
        if reader.message_count == 0:
            raise UserError(f"{bag}: bag is empty (no messages; topics: {reader.describe_topics()})")
        obs_types, obs_missing = _check_topics(reader, cfg.observation, "observation", bag)
        if obs_missing:
            raise UserError(
                f"{bag}: observation topic '{obs_missing[0]}' not in bag (topics: {reader.describe_topics()})"
            )
        act_types, act_missing = _check_topics(reader, cfg.action, "action", bag) if cfg.action else ({}, [])
        has_actions = bool(cfg.action) and not act_missing
        if cfg.action and act_missing:
            if require_actions or act_types:
                raise UserError(
                    f"{bag}: action topic '{act_missing[0]}' not in bag (topics: {reader.describe_topics()})"
                )
            log(
                f"note: {bag}: no action topics ({', '.join(act_missing)}): writing a state-only dataset "
                "(methods that need actions will refuse it)"
            )
        elif not cfg.action and require_actions:
            raise UserError(f"{cfg.path or 'config'}: --require-actions, but the config lists no 'action' fields")

        marker_topic = cfg.topics.episode
        mt = reader.topics.get(marker_topic)
        use_markers = mt is not None and mt.count > 0
        if mt is not None and use_markers and mt.msgtype != MARKER_TYPE:
            raise UserError(
                f"{bag}: episode marker topic '{marker_topic}' has type {mt.msgtype}, expected {MARKER_TYPE}"
            )
        joy: Optional[JoyButtons] = None
        rec = cfg.record
        jt = reader.topics.get(rec.joy_topic) if rec.joy_topic and not use_markers else None
        if jt is not None and jt.count > 0:
            if jt.msgtype != JOY_TYPE:
                raise UserError(f"{bag}: record.joy_topic '{rec.joy_topic}' has type {jt.msgtype}, expected {JOY_TYPE}")
            joy = JoyButtons(rec.joy_topic, rec.joy_button, rec.joy_discard_button)
        takes = Takes()
        idle: Optional[IdleSignal] = None
        if isec.idle_joints:
            idle_topic = isec.idle_topic or cfg.topics.joint_states
            it = reader.topics.get(idle_topic)
            if it is None or it.count == 0:
                raise UserError(f"{bag}: import.idle_joints: topic '{idle_topic}' not in bag "
                                f"(topics: {reader.describe_topics()})")
            if it.msgtype != "sensor_msgs/msg/JointState":
                raise UserError(f"{bag}: import.idle_joints: topic '{idle_topic}' has type {it.msgtype}, "
                                "expected sensor_msgs/msg/JointState")
            idle = IdleSignal(idle_topic, list(isec.idle_joints))

        max_abs = isec.max_abs
        obs_asm = VectorAssembler(cfg.observation, max_abs=max_abs, types=obs_types)
        act_asm = VectorAssembler(cfg.action, max_abs=max_abs, types=act_types) if has_actions else None
        # counts come from the bag's index (untrusted): a first guess only, the series grow as needed
        obs_series = [Series(capacity=min(reader.topics[s.topic].count, 1 << 16)) for s in cfg.observation]
        act_series = (
            [Series(capacity=min(reader.topics[s.topic].count, 1 << 16)) for s in cfg.action] if has_actions else []
        )
        data_topics = set(obs_types) | set(act_types if has_actions else ())
        event_topics = ({marker_topic} if use_markers else set()) | ({joy.topic} if joy else set())
        wanted = data_topics | event_topics | ({idle.topic} if idle else set())
        total = sum(reader.topics[t].count for t in wanted)
        markers: list[tuple[int, dict[str, Any]]] = []
        receive: dict[str, list[int]] = {t: [] for t in wanted if t not in event_topics or t in data_topics}
        header: dict[str, list[int]] = {t: [] for t in receive}
        last_stamp = 0
        n_read = 0

        from tqdm import tqdm

        obs_errors: list[list[int]] = [[] for _ in cfg.observation]  # receive times of clock faults
        obs_per_topic = {t: len(obs_asm.fields_of(t)) for t in obs_types}
        bar = tqdm(total=total, unit="msg", desc="import-bag", disable=None if progress else True, file=sys.stderr)
        try:
            for topic, msgtype, stamp, raw in reader.messages(wanted):
                n_read += 1
                bar.update(1)
                last_stamp = max(last_stamp, stamp)
                msg = reader.deserialize(raw, msgtype, topic, stamp)
                if topic == marker_topic and use_markers:
                    when = f"at t={reader.rel_s(stamp):.3f} s into the bag"
                    try:
                        markers.append((stamp, parse_marker(getattr(msg, "data", ""), topic, when)))
                    except UserError as exc:
                        raise UserError(f"{bag}: {exc}") from None
                    continue
                if joy is not None and topic == joy.topic:
                    try:
                        for m in joy.apply(list(getattr(msg, "buttons", ())), takes):
                            markers.append((stamp, {"event": m["event"], "episode": m["episode"], "success": None}))
                    except UserError as exc:
                        raise UserError(f"{bag}: {exc}") from None
                    if topic not in data_topics:
                        continue
                receive[topic].append(stamp)
                h = header_stamp_ns(msg)
                if h is not None:
                    header[topic].append(h)
                try:
                    if idle is not None and topic == idle.topic:
                        idle.add(msg, stamp, msgtype)
                    new = obs_asm.update(topic, msg, stamp, msgtype)
                    for i in new:
                        value, sampled = obs_asm.value(i), obs_asm.sample_ns(i)
                        if value is None or sampled is None:  # update() reported it new: it has both
                            continue
                        obs_series[i].append(stamp, value, stamp - sampled)
                    if h is not None and len(new) < obs_per_topic.get(topic, 0):  # a repeated or implausible stamp
                        for f in obs_asm.faults(stamp):
                            if f.kind == "clock" and obs_asm.specs[f.field].topic == topic:
                                obs_errors[f.field].append(stamp)
                    if act_asm is not None:
                        for i in act_asm.update(topic, msg, stamp, msgtype):
                            act_value = act_asm.value(i)
                            if act_value is not None:
                                act_series[i].append(stamp, act_value)
                except UserError as exc:
                    raise UserError(f"{bag}: {exc} (at t={reader.rel_s(stamp):.3f} s into the bag)") from None
        except BaseException:
            bar.leave = False
            raise
        finally:
            bar.close()
        storage = reader.storage
        files = [str(f) for f in reader.files]
        bag_topics = {
            t.name: {"type": t.msgtype, "count": t.count} for t in reader.topics.values() if t.name in wanted
        }
        bag_start, bag_end = reader.start_ns, max(reader.end_ns - 1, last_stamp)

    if n_read == 0:
        raise UserError(f"{bag}: no messages on the configured topics (bag is empty or unreadable)")
    obs_arrays, obs_lags = [], []
    for s in obs_series:
        t, v, lag = s.arrays_aux()
        obs_arrays.append((t, v))
        obs_lags.append(lag)
    act_arrays = [s.arrays() for s in act_series] if has_actions else None
    bad = first_bad_value(
        list(cfg.observation) + (list(cfg.action) if has_actions else []),
        obs_arrays + (act_arrays or []),
        max_abs,
    )
    if bad is not None:
        spec, t_bad, k, bad_value = bad
        what = ("NaN" if math.isnan(bad_value) else
                ("inf" if math.isinf(bad_value) else f"{bad_value:.6g} (|x| > {max_abs:g}, import.max_abs)"))
        rel = (t_bad - bag_start) * 1e-9 if bag_start else t_bad * 1e-9
        raise UserError(
            f"{bag}: topic '{spec.topic}' field '{spec.field}': element {k} is {what} at t={rel:.3f} s into the bag"
        )
    for spec, (t, _) in zip(cfg.observation, obs_arrays):
        if len(t) == 0:
            raise UserError(f"{bag}: no complete observation: topic '{spec.topic}' has no messages")

    receive_arr = {t: np.asarray(v, np.int64) for t, v in receive.items()}
    rates = {t: checks.effective_rate_hz(receive_arr[t], gap_ns) for t in sorted(data_topics)}
    # maximum age per observation field: as the controller computes it from the dataset's rates
    limits_asm = VectorAssembler(cfg.observation, types=obs_types, period_s=1.0 / rate,
                                 stale_periods=isec.stale_periods,
                                 rates_hz={t: r for t, r in rates.items() if r is not None})
    limits = [limits_asm.max_age_ns(i) for i in range(len(cfg.observation))]
    hold = [s.align == "hold" for s in cfg.observation]
    errors = [np.sort(np.asarray(e, np.int64)) for e in obs_errors]
    # topics whose fields are all held ('align: hold', e.g. a goal published once) never make a gap
    gap_topics = dict.fromkeys(s.topic for s in cfg.observation if s.align != "hold") \
        or dict.fromkeys(s.topic for s in cfg.observation)
    obs_topic_times = [np.sort(receive_arr[t]) for t in gap_topics]
    state = state_intervals(obs_topic_times, gap_ns)
    act_topics = list(dict.fromkeys(s.topic for s in cfg.action)) if has_actions else []
    command_times = np.sort(np.concatenate([receive_arr[t] for t in act_topics])) if act_topics else None
    try:
        seg = segment(
            state, gap,
            markers=markers or None, end_ns=bag_end,
            marker_topic=f"{joy.topic} (button {joy.button})" if joy is not None else marker_topic,
            command_times=command_times, command_topics=act_topics, silence_s=isec.command_silence_s,
            idle=idle.speeds() if idle is not None else None, idle_velocity=isec.idle_velocity, idle_s=isec.idle_s,
            idle_what=f"{', '.join(isec.idle_joints)} on {idle.topic}" if idle is not None else "",
        )
    except UserError as exc:
        raise UserError(f"{bag}: {exc}") from None
    intervals = seg.intervals
    if seg.split_marked:
        log(f"note: {seg.split_marked} marked episode(s) split where the state stream stops for more than {gap:g} s")
    if seg.discarded:
        log(f"note: {seg.discarded} take(s) discarded by 'discard' markers")
    n_rows = sum(max(0, iv.end_ns - iv.start_ns) for iv in intervals) / period_ns
    if n_rows > MAX_ROWS:
        raise UserError(
            f"{bag}: {n_rows:.3g} rows at {rate:g} Hz exceed the limit of {MAX_ROWS:g} (lower --rate)"
        )

    min_steps = isec.min_episode_steps
    kept: list[ResampledEpisode] = []
    incomplete = 0
    short_lengths: list[int] = []
    stale_steps = np.zeros(len(cfg.observation), np.int64)
    n_stale = 0
    for iv in intervals:
        ep = resample_episode(iv, obs_arrays, act_arrays, period_ns, hold=hold)
        if ep is None:
            incomplete += 1
            continue
        pieces = [ep]
        if len(ep.grid):
            faults = step_faults(ep.grid, obs_arrays, obs_lags, limits, errors)
            stale_steps += faults.sum(0)
            n_stale += int(faults.any(1).sum())
            pieces = split_valid(ep, np.asarray(faults.any(1)))
        for piece in pieces:
            if len(piece.grid) < min_steps:
                short_lengths.append(len(piece.grid))
            else:
                kept.append(piece)
    if n_stale:
        worst = [f"{cfg.observation[i].topic}:{cfg.observation[i].field} {int(stale_steps[i])}"
                 for i in np.argsort(-stale_steps) if stale_steps[i]]
        log(f"note: dropped {n_stale} step(s) where an observation field was older than its maximum age "
            f"(steps per field: {', '.join(worst)}); episodes split there")
    if not kept:
        why = []
        if incomplete:
            why.append(f"{incomplete} without a value for every field")
        if short_lengths:
            why.append(f"{len(short_lengths)} shorter than {min_steps} steps (longest {max(short_lengths)})")
        raise UserError(
            f"{bag}: no complete episode at {rate:g} Hz ({len(intervals)} candidate(s): {'; '.join(why)})"
        )
    dropped = incomplete + len(short_lengths)
    if dropped:
        log(
            f"note: dropped {dropped} of {len(intervals)} episode(s) "
            f"({len(short_lengths)} shorter than {min_steps} steps, {incomplete} without every field)"
        )

    # ---- data checks
    obs_names = obs_asm.element_names()
    act_names = act_asm.element_names() if act_asm is not None else []
    obs_all = np.concatenate([ep.obs for ep in kept])
    act_all = np.concatenate([ep.act for ep in kept]) if has_actions else None
    ends = np.cumsum([len(ep.grid) for ep in kept])
    roles = {**{t: "action" for t in act_topics}, **{s.topic: "observation" for s in cfg.observation}}
    findings = (
        checks.echo_findings(obs_all, act_all, ends, obs_names, act_names)
        + checks.constant_findings(obs_all, obs_names)
        + checks.stamp_findings({t: np.asarray(v, np.int64) for t, v in header.items() if v and t in data_topics},
                                {t: v for t, v in receive_arr.items() if t in data_topics})
        + checks.rate_findings(rates, rate, roles)
    )
    long = long_episode_warning([(ep.grid[-1] - ep.grid[0]) * 1e-9 for ep in kept], isec.max_episode_s, seg.tried)
    if long is not None:
        findings.insert(0, checks.Finding("long-episode", long))
    for finding in findings:
        log(str(finding))

    successes = [ep.interval.success for ep in kept]
    success = [bool(s) for s in successes] if seg.rule == "markers" and all(s is not None for s in successes) else None
    meta: dict[str, Any] = {
        "source": {
            "bag": str(Path(bag_path).resolve()),
            "files": files,
            "storage": storage,
            "topics": bag_topics,
            "start_ns": int(bag_start),
            "end_ns": int(bag_end),
        },
        "task": cfg.task.env,
        "config": cfg.path,
        "rate_hz": rate,
        "fields": {
            "observation": [_spec_dict(s) for s in cfg.observation],
            "action": [_spec_dict(s) for s in cfg.action] if has_actions else [],
        },
        "obs_names": obs_names,
        "act_names": act_names,
        "action_spec": action_spec(cfg, act_names, act_asm.dim or 0) if act_asm is not None else None,
        "topic_rates_hz": {t: r for t, r in rates.items() if r is not None},
        "resampling": {
            "method": "zero-order hold",
            "phase": PHASE,
            "timestamps": "bag receive time",
            "episode_start_end": "first and last grid point of each episode (ns)",
        },
        "alignment": {
            "stale_periods": isec.stale_periods,
            "fields": [
                {"name": f"{s.topic}:{s.field}", "stamp": s.stamp, "align": s.align,
                 "max_age_s": None if lim is None else lim * 1e-9}
                for s, lim in zip(cfg.observation, limits)
            ],
            "dropped_steps": n_stale,
        },
        "episodes_from": seg.rule,
        "episode_rules": [o.as_dict() for o in seg.tried],
        "gap_s": gap,
        "min_episode_steps": min_steps,
        "dropped_episodes": dropped,
        "stray_markers": seg.stray,
        "discarded_takes": seg.discarded,
        "split_marked_episodes": seg.split_marked,
        "warnings": [f.as_dict() for f in findings],
        "episodes": [
            {
                "start_ns": int(ep.grid[0]),
                "end_ns": int(ep.grid[-1]),
                "steps": int(len(ep.grid)),
                "cut_by": ep.interval.cut_by,
                **({"marker_episode": ep.interval.episode} if ep.interval.episode is not None else {}),
                **({"success": ep.interval.success} if ep.interval.success is not None else {}),
            }
            for ep in kept
        ],
    }
    from smiling_ros.data.dataset import Dataset

    ds = Dataset.from_episodes([(ep.obs, ep.act) for ep in kept], meta, success)
    if not (np.isfinite(ds.obs).all() and (ds.act is None or np.isfinite(ds.act).all())):
        raise UserError(f"{bag}: values overflow float32 (lower import.max_abs)")
    ds.save(out)
    ds.meta["import"] = {
        "seconds": time.perf_counter() - t_start,
        "messages": n_read,
        "kept": len(kept),
        "dropped": dropped,
        "state_only": not has_actions,
    }
    return ds
