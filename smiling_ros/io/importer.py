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
3. Episodes are time intervals ``[a, b]`` (bag receive time, ns): from the episode markers on
   ``topics.episode`` when the bag has them (std_msgs/String JSON
   ``{"event": "start"|"end", "episode": k, "success": bool}``), otherwise the maximal intervals in
   which no observation topic is silent for longer than ``gap_s`` (:func:`gap_intervals`). Marked
   episodes are also cut where the state stream stops for longer than ``gap_s`` (a dropout is never
   bridged by holding stale values; :func:`intersect_intervals`).
4. Each episode is resampled on a fixed grid by zero-order hold (:func:`zoh`): the episode becomes
   *ready* at the first time every field (observations and actions) has a message inside it; grid
   points are ``ready + (k + phase) / rate`` for ``k = 0, 1, ...`` up to ``b``, and each field
   takes its last message at or before the grid point. ``phase = 0.5`` puts the grid half a period
   after the ready time, i.e. between message arrivals when the recording rate equals the dataset
   rate, so receive-time jitter does not duplicate or skip samples.
   ``obs[k]`` and ``act[k]`` are the values held at grid point ``k``; ``act[k]`` is therefore the
   last command sent at or before the moment ``obs[k]`` was current.
5. Episodes shorter than ``import.min_episode_steps`` are dropped (counted in the metadata), and
   the dataset is written atomically (:meth:`smiling_ros.data.dataset.Dataset.save`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from smiling_ros.config import Config, FieldSpec
from smiling_ros.errors import UserError
from smiling_ros.io.fields import VectorAssembler, normalize_msgtype

if TYPE_CHECKING:
    from smiling_ros.data.dataset import Dataset

MARKER_TYPE = "std_msgs/msg/String"
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


def gap_intervals(times_per_topic: Sequence[np.ndarray], gap_ns: int) -> list[tuple[int, int]]:
    """Maximal intervals ``[a, b]`` in which no topic is silent for longer than ``gap_ns``.

    Silence before a topic's first and after its last message (relative to the span of all
    topics) counts too. Topics with no messages are ignored. Intervals are closed and sorted.
    """
    series = [np.asarray(t, dtype=np.int64) for t in times_per_topic if len(t)]
    if not series:
        return []
    start = min(int(t[0]) for t in series)
    end = max(int(t[-1]) for t in series)
    gaps: list[tuple[int, int]] = []
    for t in series:
        padded = np.concatenate([[start], t, [end]])
        d = np.diff(padded)
        for i in np.nonzero(d > gap_ns)[0]:
            gaps.append((int(padded[i]), int(padded[i + 1])))
    gaps.sort()
    merged: list[list[int]] = []
    for a, b in gaps:
        if merged and a < merged[-1][1]:  # overlapping; touching gaps leave their shared instant
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    out = []
    cursor = start
    for a, b in merged:  # the open gap (a, b) separates [cursor, a] from [b, ...]
        if a >= cursor:
            out.append((cursor, a))
        cursor = b
    out.append((cursor, end))
    return [(a, b) for a, b in out if b >= a]


@dataclasses.dataclass
class Series:
    """Growable time series of one field: ``times`` (M,) int64 ns, ``values`` (M, D) float64."""

    capacity: int = 1024
    n: int = 0
    times: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    values: Optional[np.ndarray] = None

    def append(self, t: int, v: np.ndarray) -> None:
        if self.values is None:
            cap = max(self.capacity, 16)
            self.times = np.zeros(cap, np.int64)
            self.values = np.zeros((cap, len(v)), np.float64)
        elif self.n == len(self.times):
            cap = 2 * len(self.times)
            self.times = np.resize(self.times, cap)
            self.values = np.concatenate([self.values, np.zeros_like(self.values)])
        self.times[self.n] = t
        self.values[self.n] = v
        self.n += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self.values is None:
            return np.zeros(0, np.int64), np.zeros((0, 0))
        t, v = self.times[: self.n], self.values[: self.n]
        if self.n > 1 and np.any(np.diff(t) < 0):  # merged split files may interleave
            order = np.argsort(t, kind="stable")
            t, v = t[order], v[order]
        return t, v


@dataclasses.dataclass
class Interval:
    """An episode candidate: closed time interval [start_ns, end_ns] plus marker info."""

    start_ns: int
    end_ns: int
    episode: Optional[int] = None
    success: Optional[bool] = None


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
) -> Optional[ResampledEpisode]:
    """ZOH-resample one interval; None when some field has no message inside it."""
    fields = list(obs_series) + list(act_series or [])
    ready = interval.start_ns
    for t, _ in fields:
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


# --------------------------------------------------------------------------- markers
def parse_marker(text: str, topic: str, when: str) -> dict[str, Any]:
    """One episode marker (JSON) -> dict with 'event' ('start'/'end'/other), 'episode', 'success'."""
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        d = None
    if not isinstance(d, dict) or not isinstance(d.get("event"), str):
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise UserError(
            f"topic '{topic}': episode marker {when} is not JSON like "
            f'{{"event": "start", "episode": 0}} (got {shown!r})'
        )
    ep = d.get("episode")
    succ = d.get("success")
    return {
        "event": d["event"],
        "episode": ep if isinstance(ep, int) and not isinstance(ep, bool) else None,
        "success": succ if isinstance(succ, bool) else None,
    }


def marker_intervals(markers: list[tuple[int, dict[str, Any]]], end_ns: int) -> tuple[list[Interval], int]:
    """Episode intervals from (stamp_ns, marker) pairs in time order.

    A 'start' opens an episode (closing an open one there), an 'end' closes it (with its success);
    an episode still open at the end of the recording closes at ``end_ns``. Returns the intervals
    and the number of markers that did not fit (an 'end' with no open episode, unknown events).
    """
    out: list[Interval] = []
    cur: Optional[Interval] = None
    stray = 0
    count = 0
    for stamp, m in markers:
        if m["event"] == "start":
            if cur is not None:
                cur.end_ns = stamp
                out.append(cur)
            cur = Interval(stamp, stamp, m["episode"] if m["episode"] is not None else count)
            count += 1
        elif m["event"] == "end":
            if cur is None:
                stray += 1
                continue
            cur.end_ns = stamp
            cur.success = m["success"]
            out.append(cur)
            cur = None
        else:
            stray += 1
    if cur is not None:
        cur.end_ns = max(end_ns, cur.start_ns)
        out.append(cur)
    return out, stray


def intersect_intervals(marked: list[Interval], state: list[Interval]) -> tuple[list[Interval], int]:
    """Marked episodes cut to where the state stream runs (no observation topic silent for more
    than gap_s): a marked episode spanning a dropout becomes several pieces with its marker info.
    Returns the pieces and how many marked episodes were split."""
    out: list[Interval] = []
    split = 0
    for m in marked:
        pieces = [
            Interval(max(m.start_ns, s.start_ns), min(m.end_ns, s.end_ns), m.episode, m.success)
            for s in state
            if s.start_ns <= m.end_ns and s.end_ns >= m.start_ns
        ]
        split += len(pieces) > 1
        out += pieces
    return out, split


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

        try:
            fmt = json.loads((out / "meta.json").read_text()).get("format")
        except (OSError, ValueError, AttributeError):
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

    rate_hz: dataset rate (default ``cfg.rate_hz``). gap_s: episode split threshold without
    markers (default ``cfg.import_.gap_s``). require_actions: a bag without the action topics is
    an error instead of a state-only dataset. salvage: read the complete part of a truncated MCAP.
    log: where notes go (one line each). Returns the saved dataset; ``meta['import']`` holds the
    summary (episodes kept/dropped, seconds taken).
    """
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
        if use_markers and mt.msgtype != MARKER_TYPE:
            raise UserError(
                f"{bag}: episode marker topic '{marker_topic}' has type {mt.msgtype}, expected {MARKER_TYPE}"
            )

        max_abs = cfg.import_.max_abs
        obs_asm = VectorAssembler(cfg.observation, max_abs=max_abs, types=obs_types)
        act_asm = VectorAssembler(cfg.action, max_abs=max_abs, types=act_types) if has_actions else None
        # counts come from the bag's index (untrusted): a first guess only, the series grow as needed
        obs_series = [Series(capacity=min(reader.topics[s.topic].count, 1 << 16)) for s in cfg.observation]
        act_series = (
            [Series(capacity=min(reader.topics[s.topic].count, 1 << 16)) for s in cfg.action] if has_actions else []
        )
        wanted = set(obs_types) | set(act_types if has_actions else ()) | ({marker_topic} if use_markers else set())
        total = sum(reader.topics[t].count for t in wanted)
        markers: list[tuple[int, dict[str, Any]]] = []
        last_stamp = 0
        n_read = 0

        from tqdm import tqdm

        assemblers = [(obs_asm, obs_series)] + ([(act_asm, act_series)] if act_asm is not None else [])
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
                for asm, series in assemblers:
                    try:
                        idx = asm.update(topic, msg, stamp, msgtype)
                    except UserError as exc:
                        raise UserError(f"{bag}: {exc} (at t={reader.rel_s(stamp):.3f} s into the bag)") from None
                    for i in idx:
                        series[i].append(stamp, asm.value(i))
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
    obs_arrays = [s.arrays() for s in obs_series]
    act_arrays = [s.arrays() for s in act_series] if has_actions else None
    bad = first_bad_value(
        list(cfg.observation) + (list(cfg.action) if has_actions else []),
        obs_arrays + (act_arrays or []),
        max_abs,
    )
    if bad is not None:
        spec, t, k, v = bad
        what = "NaN" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.6g} (|x| > {max_abs:g}, import.max_abs)")
        rel = (t - bag_start) * 1e-9 if bag_start else t * 1e-9
        raise UserError(
            f"{bag}: topic '{spec.topic}' field '{spec.field}': element {k} is {what} at t={rel:.3f} s into the bag"
        )
    for spec, (t, _) in zip(cfg.observation, obs_arrays):
        if len(t) == 0:
            raise UserError(f"{bag}: no complete observation: topic '{spec.topic}' has no messages")

    stray = 0
    split_markers = 0
    obs_topic_times = []
    seen_topics: set[str] = set()
    for spec, (t, _) in zip(cfg.observation, obs_arrays):
        if spec.topic not in seen_topics:
            seen_topics.add(spec.topic)
            obs_topic_times.append(t)
    state_intervals = [Interval(a, b) for a, b in gap_intervals(obs_topic_times, gap_ns)]
    if use_markers:
        marked, stray = marker_intervals(markers, bag_end)
        if not marked:
            raise UserError(f"{bag}: episode markers on '{marker_topic}' contain no 'start' event")
        intervals, split_markers = intersect_intervals(marked, state_intervals)
        if split_markers:
            log(f"note: {split_markers} marked episode(s) split where the state stream stops for more than {gap:g} s")
    else:
        intervals = state_intervals
    n_rows = sum(max(0, iv.end_ns - iv.start_ns) for iv in intervals) / period_ns
    if n_rows > MAX_ROWS:
        raise UserError(
            f"{bag}: {n_rows:.3g} rows at {rate:g} Hz exceed the limit of {MAX_ROWS:g} (lower --rate)"
        )

    min_steps = cfg.import_.min_episode_steps
    kept: list[ResampledEpisode] = []
    incomplete = 0
    short_lengths: list[int] = []
    for iv in intervals:
        ep = resample_episode(iv, obs_arrays, act_arrays, period_ns)
        if ep is None:
            incomplete += 1
        elif len(ep.grid) < min_steps:
            short_lengths.append(len(ep.grid))
        else:
            kept.append(ep)
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

    successes = [ep.interval.success for ep in kept]
    success = successes if use_markers and all(s is not None for s in successes) else None
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
        "obs_names": obs_asm.element_names(),
        "act_names": act_asm.element_names() if act_asm is not None else [],
        "resampling": {
            "method": "zero-order hold",
            "phase": PHASE,
            "timestamps": "bag receive time",
            "episode_start_end": "first and last grid point of each episode (ns)",
        },
        "episodes_from": "markers" if use_markers else "gaps",
        "gap_s": None if use_markers else gap,
        "min_episode_steps": min_steps,
        "dropped_episodes": dropped,
        "stray_markers": stray,
        "split_marked_episodes": split_markers,
        "episodes": [
            {
                "start_ns": int(ep.grid[0]),
                "end_ns": int(ep.grid[-1]),
                "steps": int(len(ep.grid)),
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
