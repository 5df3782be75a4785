"""Episodes: the episode-marker format, and the rules that cut a recording into episodes.

Markers
-------
An episode marker is a ``std_msgs/String`` whose ``data`` is JSON
``{"event": "start"|"end"|"discard", "episode": k, ...}`` (``success``: bool on an ``end``;
other keys are kept). :func:`marker_text` writes one, :func:`parse_marker_text` reads one
leniently (None for anything that is not a marker; live nodes ignore such messages) and
:func:`parse_marker` strictly (a :class:`UserError` naming topic and time; import-bag refuses a
bag with a malformed marker). ``discard`` drops the take opened by the last ``start``.

Rules, in order of preference
-----------------------------
A recording is cut into episodes by the first rule of this list that finds something in it.
The state-gap rule always applies on top: an episode never bridges a dropout of the state stream.

1. ``markers``: the bag has messages on ``topics.episode``. ``start`` opens a take, ``end``
   closes it, ``discard`` drops it (:func:`marker_intervals`). A bag without them but with the
   joystick topic ``record.joy_topic`` gets its markers from the button presses
   (:class:`JoyButtons`: ``record.joy_button`` toggles the take, ``record.joy_discard_button``
   discards it), as recorder_node makes them live.
2. ``command_silence``: the action topics go silent for longer than ``import.command_silence_s``
   (and 5 of their median periods) while the state stream goes on: a teleoperator released the
   device between takes. Each run of commands is a take (:func:`silence_holes`).
3. ``idle``: the configured joints (``import.idle_joints``) all move slower than
   ``import.idle_velocity`` for at least ``import.idle_s``: the robot rests between takes
   (:func:`idle_holes`).
4. ``gaps``: no observation topic is silent for longer than ``import.gap_s``
   (:func:`gap_intervals`; the rule of recordings made by stopping the robot's driver).

Each episode records which rule cut its start and its end (``recording`` where it is the
recording's own start or end), so an import can say per episode where it came from.
All times are integers in nanoseconds (bag receive time unless stated).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from smiling_ros.errors import UserError

MARKER_TYPE = "std_msgs/msg/String"
JOY_TYPE = "sensor_msgs/msg/Joy"
MARKER_EVENTS = ("start", "end", "discard")

RULES = ("markers", "command_silence", "idle", "gaps")  # order of preference
RECORDING = "recording"  # an episode boundary that is the recording's own start or end

SILENCE_PERIODS = 5.0  # command silence must also exceed this many median command periods
LONG_FACTOR = 3.0  # an episode this many times the median of the others is suspicious


# --------------------------------------------------------------------------- markers
def marker_text(event: str, episode: int, **fields: Any) -> str:
    """The JSON payload of an episode marker (keys sorted)."""
    if event not in MARKER_EVENTS:
        raise ValueError(f"episode marker event must be one of {', '.join(MARKER_EVENTS)}, got {event!r}")
    return json.dumps({"event": event, "episode": int(episode), **fields}, sort_keys=True)


MAX_MARKER_BYTES = 1 << 20  # a marker is a short JSON object; nesting and size are bounded


def parse_marker_text(text: Any) -> Optional[dict[str, Any]]:
    """The marker dict from a String payload, or None when it is not a marker (live use: ignore it)."""
    from smiling_ros.io.inputs import parse_json

    try:
        data = parse_json(text, "episode marker", max_bytes=MAX_MARKER_BYTES)
    except (UserError, TypeError, ValueError, AttributeError):
        return None
    if not isinstance(data, dict) or data.get("event") not in MARKER_EVENTS or "episode" not in data:
        return None
    return data


def parse_marker(text: Any, topic: str, when: str) -> dict[str, Any]:
    """One marker from a recording, strictly: a dict with 'event' (any string; unknown events are
    counted as stray by :func:`marker_intervals`), 'episode' (int or None), 'success' (bool or
    None). Anything that is not a JSON object with a string 'event' is a :class:`UserError`."""
    from smiling_ros.io.inputs import parse_json

    try:
        d = parse_json(text, f"topic '{topic}'", max_bytes=MAX_MARKER_BYTES)
    except (UserError, TypeError, ValueError, AttributeError):
        d = None
    if not isinstance(d, dict) or not isinstance(d.get("event"), str):
        shown = str(text) if len(str(text)) <= 60 else str(text)[:57] + "..."
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


# --------------------------------------------------------------------------- intervals
@dataclass
class Interval:
    """An episode candidate: the closed time interval [start_ns, end_ns], what cut each end,
    and the marker's episode number and success when markers made it."""

    start_ns: int
    end_ns: int
    episode: Optional[int] = None
    success: Optional[bool] = None
    start_by: str = RECORDING
    end_by: str = RECORDING

    @property
    def cut_by(self) -> list[str]:
        """The rules that cut this episode (start first; the recording's own ends left out)."""
        out = [r for r in (self.start_by, self.end_by) if r != RECORDING]
        return list(dict.fromkeys(out))


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


def state_intervals(times_per_topic: Sequence[np.ndarray], gap_ns: int) -> list[Interval]:
    """:func:`gap_intervals` as :class:`Interval` s whose inner ends are cut by ``gaps``."""
    spans = gap_intervals(times_per_topic, gap_ns)
    out = []
    for i, (a, b) in enumerate(spans):
        out.append(Interval(a, b, start_by=RECORDING if i == 0 else "gaps",
                            end_by=RECORDING if i == len(spans) - 1 else "gaps"))
    return out


def marker_intervals(markers: list[tuple[int, dict[str, Any]]], end_ns: int) -> tuple[list[Interval], int, int]:
    """Episode intervals from (stamp_ns, marker) pairs in time order.

    A 'start' opens an episode (closing an open one there), an 'end' closes it (with its success),
    a 'discard' drops the open one; an episode still open at the end of the recording closes at
    ``end_ns``. Returns the intervals, the number of markers that did not fit (an 'end' or
    'discard' with no open episode, unknown events) and the number of discarded takes.
    """
    out: list[Interval] = []
    cur: Optional[Interval] = None
    stray = 0
    discarded = 0
    count = 0
    for stamp, m in markers:
        if m["event"] == "start":
            if cur is not None:
                cur.end_ns = stamp
                out.append(cur)
            cur = Interval(stamp, stamp, m["episode"] if m["episode"] is not None else count,
                           start_by="markers", end_by="markers")
            count += 1
        elif m["event"] == "end":
            if cur is None:
                stray += 1
                continue
            cur.end_ns = stamp
            cur.success = m["success"]
            out.append(cur)
            cur = None
        elif m["event"] == "discard":
            if cur is None:
                stray += 1
                continue
            discarded += 1
            cur = None
        else:
            stray += 1
    if cur is not None:
        cur.end_ns = max(end_ns, cur.start_ns)
        cur.end_by = RECORDING
        out.append(cur)
    return out, stray, discarded


def intersect_intervals(marked: list[Interval], state: list[Interval]) -> tuple[list[Interval], int]:
    """Marked episodes cut to where the state stream runs: a marked episode spanning a dropout
    becomes several pieces with its marker info. Returns the pieces and how many marked episodes
    were split."""
    out: list[Interval] = []
    split = 0
    for m in marked:
        pieces = []
        for s in state:
            if s.start_ns <= m.end_ns and s.end_ns >= m.start_ns:
                a, b = max(m.start_ns, s.start_ns), min(m.end_ns, s.end_ns)
                pieces.append(Interval(a, b, m.episode, m.success,
                                       start_by=m.start_by if a == m.start_ns else s.start_by,
                                       end_by=m.end_by if b == m.end_ns else s.end_by))
        split += len(pieces) > 1
        out += pieces
    return out, split


def cut(interval: Interval, holes: list[tuple[int, int]], rule: str) -> list[Interval]:
    """``interval`` minus the open ``holes`` (sorted, inside it): the pieces left, each end cut by
    ``rule`` where a hole made it. A hole that touches an end of the interval trims it."""
    if not holes:
        return [interval]
    out = []
    cursor, cursor_by = interval.start_ns, interval.start_by
    for a, b in holes:
        a, b = max(a, interval.start_ns), min(b, interval.end_ns)
        if b <= a:
            continue
        if a > cursor:
            out.append(Interval(cursor, a, start_by=cursor_by, end_by=rule))
        if b > cursor:
            cursor, cursor_by = b, rule
    if interval.end_ns > cursor:
        out.append(Interval(cursor, interval.end_ns, start_by=cursor_by, end_by=interval.end_by))
    return out


def silence_holes(interval: Interval, times: np.ndarray, silence_ns: float) -> list[tuple[int, int]]:
    """The stretches of ``interval`` with no command for longer than ``silence_ns``.

    ``times``: command receive times (sorted, all action topics). Leading and trailing silence
    inside the interval count; an interval with no command at all is one hole.
    """
    lo = int(np.searchsorted(times, interval.start_ns, side="left"))
    hi = int(np.searchsorted(times, interval.end_ns, side="right"))
    t = times[lo:hi]
    if len(t) == 0:
        return [(interval.start_ns, interval.end_ns)] if interval.end_ns > interval.start_ns else []
    holes = []
    if t[0] - interval.start_ns > silence_ns:
        holes.append((interval.start_ns, int(t[0])))
    d = np.diff(t)
    for i in np.nonzero(d > silence_ns)[0]:
        holes.append((int(t[i]), int(t[i + 1])))
    if interval.end_ns - t[-1] > silence_ns:
        holes.append((int(t[-1]), interval.end_ns))
    return holes


def silence_threshold_ns(times: np.ndarray, silence_s: float) -> float:
    """``silence_s``, but at least :data:`SILENCE_PERIODS` median command periods (a slow command
    stream is not silent between its messages)."""
    thr = silence_s * 1e9
    if len(times) > 2:
        d = np.diff(times)
        d = d[d > 0]
        if len(d):
            thr = max(thr, SILENCE_PERIODS * float(np.median(d)))
    return thr


def idle_holes(interval: Interval, times: np.ndarray, speed: np.ndarray, threshold: float,
               idle_ns: float) -> list[tuple[int, int]]:
    """The stretches of ``interval`` where ``speed`` (per sample at ``times``: the largest joint
    speed) stays below ``threshold`` for at least ``idle_ns``. A stretch starting at the interval's
    first sample (or ending at its last) extends to the interval's start (end)."""
    lo = int(np.searchsorted(times, interval.start_ns, side="left"))
    hi = int(np.searchsorted(times, interval.end_ns, side="right"))
    t, s = times[lo:hi], speed[lo:hi]
    if len(t) == 0:
        return []
    still = s < threshold
    # runs of consecutive still samples
    edges = np.diff(np.concatenate([[0], still.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0] - 1
    holes = []
    for i, j in zip(starts, ends):
        a, b = int(t[i]), int(t[j])
        if i == 0:
            a = interval.start_ns
        if j == len(t) - 1:
            b = interval.end_ns
        if b - a >= idle_ns:
            holes.append((a, b))
    return holes


def joint_speeds(times: np.ndarray, velocity: Optional[np.ndarray], position: Optional[np.ndarray]) -> np.ndarray:
    """The largest absolute joint speed per sample: from velocities when the messages carry them,
    else from position differences (the first sample takes the second's speed)."""
    if velocity is not None and len(velocity):
        return np.abs(velocity).max(axis=1)
    if position is None or len(position) < 2:
        return np.zeros(len(times))
    dt = np.diff(times).astype(np.float64) * 1e-9
    dp = np.abs(np.diff(position, axis=0)).max(axis=1)
    v = np.where(dt > 0, dp / np.where(dt > 0, dt, 1.0), np.inf)
    return np.concatenate([[v[0]], v])


@dataclass
class RuleOutcome:
    """What one rule found in a recording: ``applies`` (it cut something), ``note`` (a few words
    for reports, e.g. 'no silence > 0.5 s on /cmd'), and the episodes it made."""

    rule: str
    applies: bool
    note: str
    intervals: Optional[list[Interval]] = None

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "applies": self.applies, "note": self.note}


def apply_holes(state: list[Interval], holes_of: Any, rule: str) -> tuple[list[Interval], int]:
    """Cut every state interval by the holes ``holes_of(interval)`` gives; returns the pieces and
    the number of holes found."""
    out: list[Interval] = []
    found = 0
    for s in state:
        holes = holes_of(s)
        found += len(holes)
        out += cut(s, holes, rule)
    return out, found


def long_episode_warning(lengths_s: Sequence[float], max_episode_s: Optional[float],
                         tried: Sequence[RuleOutcome]) -> Optional[str]:
    """A warning line when one episode is much longer than the others (more than
    :data:`LONG_FACTOR` times the median of the rest) or than ``max_episode_s``; None otherwise."""
    if not lengths_s:
        return None
    i = int(np.argmax(lengths_s))
    longest = float(lengths_s[i])
    why = None
    if max_episode_s is not None and longest > max_episode_s:
        why = f"longer than import.max_episode_s = {max_episode_s:g} s"
    elif len(lengths_s) >= 2:
        rest = float(np.median(np.delete(np.asarray(lengths_s, float), i)))
        if rest > 0 and longest > LONG_FACTOR * rest:
            why = f"{longest / rest:.1f}x the median of the others ({rest:.1f} s)"
    if why is None:
        return None
    rules = "; ".join(f"{o.rule}: {o.note}" for o in tried)
    return (f"episode {i} is {longest:.1f} s long, {why}: takes may be joined "
            f"(rules tried: {rules})")


@dataclass
class Segmentation:
    """The episodes of a recording and how they were found.

    intervals: the episode candidates in time order. rule: the rule that made them (one of
    :data:`RULES`). tried: what each rule found, in order of preference. stray / discarded /
    split_marked: marker bookkeeping (markers that fit no take, takes discarded, marked takes
    split by a state gap)."""

    intervals: list[Interval]
    rule: str
    tried: list[RuleOutcome]
    stray: int = 0
    discarded: int = 0
    split_marked: int = 0


def segment(
    state: list[Interval],
    gap_s: float,
    markers: Optional[list[tuple[int, dict[str, Any]]]] = None,
    marker_topic: str = "",
    end_ns: int = 0,
    command_times: Optional[np.ndarray] = None,
    command_topics: Sequence[str] = (),
    silence_s: float = 0.0,
    idle: Optional[tuple[np.ndarray, np.ndarray]] = None,
    idle_velocity: float = 0.0,
    idle_s: float = 0.0,
    idle_what: str = "",
) -> Segmentation:
    """Cut a recording into episodes by the first rule (markers, command silence, idle, gaps)
    that finds something; see the module docstring.

    state: :func:`state_intervals` of the observation topics (``gap_s`` made them). markers:
    (stamp, :func:`parse_marker` dict) pairs on ``marker_topic`` (None or empty: no markers).
    command_times: sorted receive times of every action message (None: no action topics).
    silence_s: the command-silence threshold (0: rule off). idle: (times, largest joint speed
    per sample) of the idle joints (None: rule off), ``idle_velocity`` and ``idle_s`` its
    thresholds, ``idle_what`` the joints for reports.
    """
    tried: list[RuleOutcome] = []
    if markers:
        marked, stray, discarded = marker_intervals(markers, end_ns)
        if not marked and not discarded:
            raise UserError(f"episode markers on '{marker_topic}' contain no 'start' event")
        pieces, split = intersect_intervals(marked, state)
        tried.append(RuleOutcome("markers", True, f"{len(markers)} markers on {marker_topic}", pieces))
        return Segmentation(pieces, "markers", tried, stray, discarded, split)
    tried.append(RuleOutcome("markers", False, f"no markers on {marker_topic or 'the marker topic'}"))

    topics = ", ".join(command_topics) or "the action topics"
    if command_times is None or not len(command_times):
        tried.append(RuleOutcome("command_silence", False, "no action topics in the recording"))
    elif silence_s <= 0:
        tried.append(RuleOutcome("command_silence", False, "off (import.command_silence_s: 0)"))
    else:
        thr = silence_threshold_ns(command_times, silence_s)
        pieces, found = apply_holes(state, lambda s: silence_holes(s, command_times, thr), "command_silence")
        if found:
            tried.append(RuleOutcome("command_silence", True,
                                     f"{found} silences > {thr / 1e9:.3g} s on {topics}", pieces))
            return Segmentation(pieces, "command_silence", tried)
        tried.append(RuleOutcome("command_silence", False, f"no silence > {thr / 1e9:.3g} s on {topics}"))

    if idle is None:
        tried.append(RuleOutcome("idle", False, "off (import.idle_joints not set)"))
    else:
        times, speed = idle
        pieces, found = apply_holes(
            state, lambda s: idle_holes(s, times, speed, idle_velocity, idle_s * 1e9), "idle")
        what = f"{idle_what} slower than {idle_velocity:g} for {idle_s:g} s"
        if found:
            tried.append(RuleOutcome("idle", True, f"{found} idle periods ({what})", pieces))
            return Segmentation(pieces, "idle", tried)
        tried.append(RuleOutcome("idle", False, f"never idle ({what})"))

    n_gaps = max(0, len(state) - 1)
    tried.append(RuleOutcome("gaps", bool(n_gaps), f"{n_gaps} state gaps > {gap_s:g} s", state))
    return Segmentation(state, "gaps", tried)


# --------------------------------------------------------------------------- takes (live marking)
class Takes:
    """The current take of a person recording demonstrations: ``start`` / ``stop`` / ``discard``
    requests (a service, a joystick button) -> episode markers.

    Each method returns ``(marker, message)``: the marker dict to publish (None when the request
    does not apply, e.g. ``stop`` with no open take) and one line saying what happened."""

    def __init__(self, first_episode: int = 0):
        self.open = False
        self.episode = first_episode  # number of the open take, or of the next one

    def start(self) -> tuple[Optional[dict[str, Any]], str]:
        if self.open:
            return None, f"take {self.episode} is already open"
        self.open = True
        return {"event": "start", "episode": self.episode}, f"take {self.episode} started"

    def stop(self) -> tuple[Optional[dict[str, Any]], str]:
        return self._close("end", "stop", "ended")

    def discard(self) -> tuple[Optional[dict[str, Any]], str]:
        return self._close("discard", "discard", "discarded")

    def _close(self, event: str, verb: str, done: str) -> tuple[Optional[dict[str, Any]], str]:
        """Close the open take with marker ``event`` (``end`` or ``discard``)."""
        if not self.open:
            return None, f"no open take to {verb}"
        self.open = False
        self.episode += 1
        return {"event": event, "episode": self.episode - 1}, f"take {self.episode - 1} {done}"

    def toggle(self) -> tuple[Optional[dict[str, Any]], str]:
        return self.stop() if self.open else self.start()


class JoyButtons:
    """Presses (rising edges) of joystick buttons (sensor_msgs/Joy ``buttons``): ``button``
    toggles the take (start, then stop), ``discard_button`` (-1: none) discards it."""

    def __init__(self, topic: str, button: int, discard_button: int = -1):
        self.topic = topic
        self.button = int(button)
        self.discard_button = int(discard_button)
        self._prev: dict[int, bool] = {}

    def _pressed(self, buttons: Sequence[Any], index: int) -> bool:
        if not 0 <= index < len(buttons):
            raise UserError(f"topic '{self.topic}': button {index} not in the Joy message ({len(buttons)} buttons; "
                            "record.joy_button / record.joy_discard_button)")
        now = bool(buttons[index])
        before = self._prev.get(index, now)  # the first message sets the state: no edge
        self._prev[index] = now
        return now and not before

    def update(self, buttons: Sequence[Any]) -> list[str]:
        """The requests one Joy message makes: 'toggle' and/or 'discard'."""
        out = []
        if self._pressed(buttons, self.button):
            out.append("toggle")
        if self.discard_button >= 0 and self._pressed(buttons, self.discard_button):
            out.append("discard")
        return out

    def apply(self, buttons: Sequence[Any], takes: Takes) -> list[dict[str, Any]]:
        """The markers one Joy message makes on ``takes``."""
        out = []
        for req in self.update(buttons):
            marker, _ = takes.toggle() if req == "toggle" else takes.discard()
            if marker is not None:
                out.append(marker)
        return out
