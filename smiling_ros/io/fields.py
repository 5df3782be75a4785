"""ROS messages <-> vectors: the one place where message fields become numbers.

ROS-free: works on any attribute object, so both messages deserialised by ``rosbags``
(dataclasses with ``__msgtype__``) and ``rclpy`` messages (classes with
``get_fields_and_field_types``) go through the same code, in ``import-bag`` and in the live nodes.

A :class:`~smiling_ros.config.FieldSpec` names a topic, a message type and a field; :func:`extract`
turns one message into a float64 vector, and :class:`VectorAssembler` concatenates the latest
values of several fields (possibly from several topics) into one observation or action vector.

Field paths and what they yield (units are those of the message: m, rad, m/s, N, ...):

- ``data`` of ``std_msgs/msg/Float64MultiArray`` (and the other ``*MultiArray`` types): all elements.
- ``position`` / ``velocity`` / ``effort`` of ``sensor_msgs/msg/JointState``: by joint name when
  ``joints`` is given (in that order), else in message order.
- any dotted attribute path, e.g. ``pose.position`` (x, y, z), ``pose.orientation`` (quaternion as
  w, x, y, z, or roll, pitch, yaw with ``orientation: euler``, axes ``sxyz``), ``pose`` (position
  then orientation: 7 or 6 values), ``twist`` (linear then angular: 6), ``data`` of
  ``std_msgs/msg/Float64`` (1), ``x`` of ``geometry_msgs/msg/Vector3`` (1).
- a nested message that is not one of the above yields its numeric fields in declaration order,
  recursively, skipping ``header`` and strings.

``indices`` then selects elements of that vector; ``size`` is the element count expected before
``indices`` is applied (after joint selection). Every mistake is a :class:`UserError` naming the
topic and the field.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from smiling_ros.config import FieldSpec
from smiling_ros.errors import UserError

JOINT_STATE = "sensor_msgs/msg/JointState"
JOINT_FIELDS = ("position", "velocity", "effort")

# Message types whose field layout is fixed by this module (order of the values they yield).
_LAYOUTS: dict[str, tuple[str, ...]] = {
    "geometry_msgs/msg/Point": ("x", "y", "z"),
    "geometry_msgs/msg/Point32": ("x", "y", "z"),
    "geometry_msgs/msg/Vector3": ("x", "y", "z"),
    "geometry_msgs/msg/Pose": ("position", "orientation"),
    "geometry_msgs/msg/Transform": ("translation", "rotation"),
    "geometry_msgs/msg/Twist": ("linear", "angular"),
    "geometry_msgs/msg/Accel": ("linear", "angular"),
    "geometry_msgs/msg/Wrench": ("force", "torque"),
}
QUATERNION = "geometry_msgs/msg/Quaternion"
_SKIP_FIELDS = {"header", "layout"}


# --------------------------------------------------------------------------- type names
@functools.lru_cache(maxsize=1024)
def normalize_msgtype(name: str) -> str:
    """``pkg/Type`` or ``pkg/msg/Type`` -> ``pkg/msg/Type`` ('' stays '')."""
    name = (name or "").strip()
    parts = name.split("/")
    if len(parts) == 2 and all(parts):
        return f"{parts[0]}/msg/{parts[1]}"
    return name


def msgtype_of(msg: Any) -> str:
    """The ROS type name of a message object ('' when it is neither a rosbags nor an rclpy message)."""
    name = getattr(msg, "__msgtype__", None)
    if isinstance(name, str):
        return name
    cls = type(msg)
    if hasattr(cls, "get_fields_and_field_types"):  # rclpy: module 'pkg.msg._snake_name'
        pkg = cls.__module__.split(".")[0]
        return f"{pkg}/msg/{cls.__name__}"
    return ""


def _field_names(msg: Any) -> list[str]:
    """Declared field names of a message object, in declaration order."""
    cls = type(msg)
    if hasattr(cls, "get_fields_and_field_types"):
        return list(cls.get_fields_and_field_types())
    dc = getattr(cls, "__dataclass_fields__", None)
    if dc is not None:
        return [n for n in dc if not n.startswith("__")]
    slots = getattr(cls, "__slots__", None)
    if slots:
        return [s.lstrip("_") for s in slots if not s.startswith("__")]
    return [n for n in vars(msg) if not n.startswith("_")] if hasattr(msg, "__dict__") else []


def _is_message(value: Any) -> bool:
    """A message, or any plain object with data attributes (e.g. SimpleNamespace)."""
    if msgtype_of(value) or hasattr(type(value), "__dataclass_fields__"):
        return True
    return not callable(value) and hasattr(value, "__dict__") and bool(_field_names(value))


# --------------------------------------------------------------------------- conversion
def _where(spec: FieldSpec) -> str:
    return f"topic '{spec.topic}' field '{spec.field}'"


def quat_wxyz(q: Any) -> np.ndarray:
    """Quaternion message (x, y, z, w attributes) -> array (w, x, y, z)."""
    return np.array([float(q.w), float(q.x), float(q.y), float(q.z)], dtype=np.float64)


def quat_to_euler(wxyz: np.ndarray) -> np.ndarray:
    """(w, x, y, z) -> (roll, pitch, yaw) in rad, static axes xyz: the convention of
    ``transforms3d.euler.quat2euler(q, 'sxyz')`` (tests hold the two equal), in closed form
    because this runs once per message. Non-unit quaternions are normalised; a zero quaternion
    (an unset orientation) gives NaN, caught downstream."""
    w, x, y, z = (float(v) for v in wxyz)
    n2 = w * w + x * x + y * y + z * z
    if not math.isfinite(n2) or n2 < 1e-300:
        return np.full(3, np.nan)
    s = 2.0 / n2
    # rotation matrix entries used by the xyz-static decomposition
    r00 = 1.0 - s * (y * y + z * z)
    r10 = s * (x * y + w * z)
    r20 = s * (x * z - w * y)
    r21 = s * (y * z + w * x)
    r22 = 1.0 - s * (x * x + y * y)
    cy = math.hypot(r00, r10)
    if cy > 4 * np.finfo(np.float64).eps:
        roll = math.atan2(r21, r22)
        pitch = math.atan2(-r20, cy)
        yaw = math.atan2(r10, r00)
    else:  # gimbal lock: yaw folded into roll, as transforms3d does
        r11 = 1.0 - s * (x * x + z * z)
        r12 = s * (y * z - w * x)
        roll = math.atan2(-r12, r11)
        pitch = math.atan2(-r20, cy)
        yaw = 0.0
    return np.array([roll, pitch, yaw], dtype=np.float64)


def _numeric_array(value: Any, spec: FieldSpec) -> Optional[np.ndarray]:
    """A number or a sequence of numbers as float64; None when ``value`` is not numeric."""
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return np.array([float(value)], dtype=np.float64)
    if isinstance(value, (str, bytes)):
        return None
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            return value.astype(np.float64, copy=False).reshape(-1)
        if value.dtype.kind == "O":
            value = list(value)
        else:
            return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "array":  # array.array from rclpy
        if len(value) == 0:
            return np.zeros(0, dtype=np.float64)
        if all(isinstance(v, (bool, int, float, np.number, np.bool_)) for v in value):
            return np.asarray(value, dtype=np.float64).reshape(-1)
        if all(_is_message(v) for v in value):  # a sequence of messages, e.g. Point[]
            return np.concatenate([_flatten(v, spec) for v in value]) if value else np.zeros(0)
        return None
    return None


def _flatten(msg: Any, spec: FieldSpec, depth: int = 0) -> np.ndarray:
    """A message object -> its values (layout rules in the module docstring)."""
    if depth > 16:
        raise UserError(f"{_where(spec)}: message nesting too deep")
    mtype = msgtype_of(msg)
    names: Sequence[str]
    if mtype == QUATERNION or (not mtype and set(_field_names(msg)) == {"x", "y", "z", "w"}):
        q = quat_wxyz(msg)
        return quat_to_euler(q) if spec.orientation == "euler" else q
    names = _LAYOUTS.get(mtype) or [n for n in _field_names(msg) if n not in _SKIP_FIELDS]
    parts = []
    for name in names:
        value = getattr(msg, name)
        arr = _numeric_array(value, spec)
        if arr is None:
            if _is_message(value):
                arr = _flatten(value, spec, depth + 1)
            else:
                continue  # strings and other non-numeric fields carry no state
        parts.append(arr)
    if not parts:
        raise UserError(f"{_where(spec)}: {mtype or type(msg).__name__} has no numeric values")
    return np.concatenate(parts)


@functools.lru_cache(maxsize=1024)
def _split_path(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _resolve(msg: Any, path: str, spec: FieldSpec, msgtype: str) -> Any:
    value = msg
    walked: list[str] = []
    for part in _split_path(path):
        if not part:
            raise UserError(f"{_where(spec)}: empty component in field path")
        if part.startswith("_") or not hasattr(value, part):
            here = ".".join(walked) or msgtype or "message"
            fields = ", ".join(_field_names(value)) or "none"
            raise UserError(
                f"{_where(spec)}: {msgtype or 'message'} has no field '{'.'.join(walked + [part])}' "
                f"(fields of {here}: {fields})"
            )
        value = getattr(value, part)
        walked.append(part)
    return value


def _joint_values(spec: FieldSpec, msg: Any, values: np.ndarray) -> np.ndarray:
    names = list(getattr(msg, "name", []) or [])
    if not spec.joints:
        if names and len(values) != len(names):
            raise UserError(
                f"{_where(spec)}: {len(values)} values for {len(names)} joints (is '{spec.field}' published?)"
            )
        return values
    key = (tuple(spec.joints), tuple(names))
    sel = _JOINT_INDEX_CACHE.get(key)
    if sel is None:
        index = {n: i for i, n in enumerate(names)}
        for joint in spec.joints:
            if joint not in index:
                shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
                raise UserError(f"topic '{spec.topic}': joint '{joint}' not in JointState (joints: {shown or 'none'})")
        sel = np.array([index[j] for j in spec.joints], dtype=np.int64)
        if len(_JOINT_INDEX_CACHE) > 256:
            _JOINT_INDEX_CACHE.clear()
        _JOINT_INDEX_CACHE[key] = sel
    if len(sel) and int(sel.max()) >= len(values):
        joint = spec.joints[int(np.argmax(sel >= len(values)))]
        raise UserError(f"{_where(spec)}: joint '{joint}' has no value ({len(values)} values for {len(names)} joints)")
    return values[sel]


_JOINT_INDEX_CACHE: dict[tuple[tuple[str, ...], tuple[str, ...]], np.ndarray] = {}


def extract(spec: FieldSpec, msg: Any, msgtype: str = "") -> np.ndarray:
    """One message -> the float64 vector ``spec`` selects from it (shape ``(n,)``).

    ``msgtype`` is the message's ROS type (``pkg/msg/Type``); when empty it is read from the
    object. Raises :class:`UserError` naming topic and field when the message has the wrong type,
    lacks the field, the field is not numeric, a joint is missing, an index is out of range or
    the size differs from ``spec.size``. NaN/inf pass through (checked by :class:`VectorAssembler`).
    """
    return extract_with_size(spec, msg, msgtype)[0]


def extract_with_size(spec: FieldSpec, msg: Any, msgtype: str = "") -> tuple[np.ndarray, int]:
    """:func:`extract`, plus the field's element count before ``indices`` (after joint selection),
    which :class:`VectorAssembler` watches for dimension changes."""
    msgtype = normalize_msgtype(msgtype) or msgtype_of(msg)
    want = normalize_msgtype(spec.type)
    if want and msgtype and want != msgtype:
        raise UserError(f"topic '{spec.topic}': message type is {msgtype}, config expects {want}")
    value = _resolve(msg, spec.field, spec, msgtype)
    arr = _numeric_array(value, spec)
    if arr is None:
        if _is_message(value):
            arr = _flatten(value, spec)
        else:
            raise UserError(f"{_where(spec)}: not numeric (got {type(value).__name__})")
    if msgtype == JOINT_STATE and spec.field in JOINT_FIELDS:
        arr = _joint_values(spec, msg, arr)
    elif spec.joints:
        raise UserError(f"{_where(spec)}: 'joints' applies to JointState position/velocity/effort only")
    n = len(arr)
    if spec.size is not None and n != spec.size:
        raise UserError(f"{_where(spec)}: {n} values, config says size {spec.size}")
    if spec.indices is not None:
        bad = [i for i in spec.indices if not -n <= i < n]
        if bad:
            raise UserError(f"{_where(spec)}: index {bad[0]} out of range for {n} values")
        arr = arr[np.asarray(spec.indices, dtype=np.int64)]
    return arr, n


def _component_names(spec: FieldSpec, n: int) -> list[str]:
    """Names of a field's elements before ``indices`` (x/y/z, w/x/y/z, roll/pitch/yaw, joints)."""
    last = spec.field.split(".")[-1]
    rot = ["roll", "pitch", "yaw"] if spec.orientation == "euler" else ["w", "x", "y", "z"]
    geometric = "." in spec.field or normalize_msgtype(spec.type).startswith("geometry_msgs/")
    if spec.joints:
        names = list(spec.joints)
    elif not geometric:
        names = []
    elif last in ("orientation", "rotation"):
        names = rot
    elif last in ("pose",):
        names = ["x", "y", "z"] + rot
    elif last in ("twist", "accel"):
        names = ["vx", "vy", "vz", "wx", "wy", "wz"]
    elif last in ("position", "translation", "linear", "angular", "force", "torque", "vector", "point"):
        names = ["x", "y", "z"]
    else:
        names = []
    return names + [str(i) for i in range(len(names), n)] if len(names) <= n else [str(i) for i in range(n)]


def element_names(spec: FieldSpec, n: int) -> list[str]:
    """Human-readable names of the ``n`` elements ``spec`` yields (for dataset metadata),
    e.g. ``/joint_states:position[shoulder]``, ``/ee_pose:pose.orientation[yaw]``."""
    base = f"{spec.topic}:{spec.field}"
    if spec.indices is not None:
        full = _component_names(spec, max(max(spec.indices) + 1, n) if spec.indices else n)
        return [f"{base}[{full[i] if i >= 0 and i < len(full) else i}]" for i in spec.indices][:n]
    return [f"{base}[{c}]" for c in _component_names(spec, n)]


def declared_size(spec: FieldSpec) -> Optional[int]:
    """Element count known from the spec alone (indices, joints or size), else None."""
    if spec.indices is not None:
        return len(spec.indices)
    if spec.joints:
        return len(spec.joints)
    return spec.size


# --------------------------------------------------------------------------- assembler
FAULT_KINDS = ("waiting", "rejected", "clock", "stale", "frozen", "nonfinite", "range")


@dataclass(frozen=True)
class FieldFault:
    """Why one field's current value may not be used.

    kind: ``waiting`` (no sample yet), ``rejected`` (the last message could not be read, e.g. a
    joint is missing from a JointState), ``clock`` (the header stamp is implausible against the
    receive time), ``stale`` (the newest sample is older than the field's maximum age),
    ``frozen`` (stale, and samples kept arriving with a stamp that did not advance),
    ``nonfinite`` (NaN/inf) or ``range`` (an element beyond ``max_abs``).
    name: the field, and the element where there is one, e.g. ``/joint_states:position[elbow]``.
    stamp_ns: the stamp of the sample at fault (ROS time, ns; the header stamp or the receive
    time), None when there is none. detail: the rest of the one-line explanation.
    """

    kind: str
    field: int
    name: str
    stamp_ns: Optional[int]
    detail: str

    def __str__(self) -> str:
        when = "" if self.stamp_ns is None else f" (stamp {self.stamp_ns * 1e-9:.6f} s)"
        return f"{self.name}: {self.detail}{when}"


def header_stamp_ns(msg: Any) -> Optional[int]:
    """``msg.header.stamp`` in ns, or None when the message has no header or the stamp is unset (0)."""
    header = getattr(msg, "header", None)
    st = getattr(header, "stamp", None)
    if st is None:
        return None
    try:
        ns = int(st.sec) * 1_000_000_000 + int(st.nanosec)
    except (AttributeError, TypeError, ValueError):
        return None
    return ns if ns > 0 else None


class VectorAssembler:
    """Latest values of several fields, concatenated in spec order into one vector, with the age
    and validity of each field.

    ``update(topic, msg, recv_ns, ros_ns=...)`` extracts every field that comes from ``topic``.
    The vector is available once every field has been seen (:meth:`ready`). The first message of
    each field fixes its size (counted before ``indices``): a later message with another size is a
    :class:`UserError` (dimension change).

    Time stamps. Each sample gets a stamp in ROS time: the message's ``header.stamp`` where it has
    one (``FieldSpec.stamp: header``, the default) or the receive time ``ros_ns``
    (``stamp: receive``, or a message without a header, or a header stamp left at 0). A header
    stamp further than ``clock_tolerance_s`` from the receive time (ahead of it, or behind it)
    is a ``clock`` fault on the field until a plausible one arrives (the sample is kept, stamped
    with its receive time, so a recording loses nothing). A sample whose stamp does
    not advance past the previous one is not new: it changes nothing and does not refresh the
    field, so a driver that keeps republishing one sample goes stale (``frozen``).

    Freshness. Field ``i`` may be used while its newest sample is at most ``max_age_ns(i)`` old:
    no limit with ``FieldSpec.align: hold``; ``FieldSpec.max_age_s`` when set; else ``stale_periods`` periods of the topic's rate in
    ``rates_hz`` (the rate it had in the training data), but at least ``stale_periods`` of
    ``period_s`` (the consumer's step, e.g. the control period); else ``stale_periods`` x
    ``period_s``; else no limit. Ages are measured on the caller's clock: a sample received at
    ``recv_ns`` with a header stamp ``d`` ns behind the ROS receive time is ``d`` ns old on
    arrival.

    Non-finite values are accepted by ``update`` (a live node must be able to observe a bad sensor
    and react) but never leave: :meth:`faults` names them (field and element), :meth:`finite` says
    whether the current values are all finite and within ``max_abs``, and :meth:`vector` raises
    :class:`UserError` naming the topic, field and stamp instead of returning them.

    Times are integers in ns. ``recv_ns`` and the ``now_ns`` given to :meth:`faults` are on one
    clock of the caller's (monotonic in the controller, the bag's log time in import-bag);
    ``ros_ns`` is the receive time on the clock header stamps use (ROS time) and defaults to
    ``recv_ns`` where the two are the same clock.
    """

    def __init__(self, specs: Iterable[FieldSpec], max_abs: float = math.inf, types: Optional[dict[str, str]] = None,
                 *, rates_hz: Optional[dict[str, float]] = None, period_s: Optional[float] = None,
                 stale_periods: float = 3.0, clock_tolerance_s: float = 0.5):
        self.specs: list[FieldSpec] = list(specs)
        if not self.specs:
            raise UserError("no fields configured (observation/action lists are empty)")
        self.max_abs = float(max_abs)
        self._by_topic: dict[str, list[int]] = {}
        self._types: dict[str, str] = {}
        for i, spec in enumerate(self.specs):
            self._by_topic.setdefault(spec.topic, []).append(i)
            t = normalize_msgtype((types or {}).get(spec.topic, "") or spec.type)
            have = self._types.get(spec.topic)
            if have and t and have != t:
                raise UserError(f"topic '{spec.topic}': configured with two message types ({have} and {t})")
            if t or spec.topic not in self._types:
                self._types[spec.topic] = t
        n = len(self.specs)
        self._values: list[Optional[np.ndarray]] = [None] * n
        self._dims: list[Optional[int]] = [declared_size(s) for s in self.specs]
        self._seen_dims: list[Optional[int]] = [None] * n  # output sizes
        self._base_dims: list[Optional[int]] = [None] * n  # sizes before indices
        self._stamps: list[Optional[int]] = [None] * n  # sample stamps, ROS time
        self._fresh: list[Optional[int]] = [None] * n  # sample times on the caller's clock
        self._recv: list[Optional[int]] = [None] * n  # receive times on the caller's clock
        self._errors: list[Optional[tuple[str, str, Optional[int]]]] = [None] * n  # (kind, detail, stamp)
        self._bad: list[Optional[int]] = [None] * n  # first non-finite / out-of-range element
        self._repeats = [0] * n  # samples since the last new one whose stamp did not advance
        self.clock_tolerance_ns = int(round(float(clock_tolerance_s) * 1e9))
        self.stale_periods = float(stale_periods)
        self._max_age: list[Optional[int]] = [
            self._default_max_age(s, rates_hz or {}, period_s) for s in self.specs]

    def _default_max_age(self, spec: FieldSpec, rates: dict[str, float], period_s: Optional[float]) -> Optional[int]:
        if spec.align == "hold":  # the latest sample, whatever its age
            return None
        if spec.max_age_s is not None:
            return int(round(spec.max_age_s * 1e9))
        rate = rates.get(spec.topic)
        periods = []
        if rate is not None and rate > 0 and math.isfinite(rate):
            periods.append(1.0 / rate)
        if period_s is not None and period_s > 0:
            periods.append(float(period_s))
        return int(round(self.stale_periods * max(periods) * 1e9)) if periods else None

    # ----------------------------------------------------------------- topology
    def topics(self) -> dict[str, str]:
        """Topic -> message type (``pkg/msg/Type``; '' where neither the config nor ``types`` said)."""
        return dict(self._types)

    def fields_of(self, topic: str) -> list[int]:
        """Indices (into ``specs``) of the fields taken from ``topic``."""
        return list(self._by_topic.get(topic, ()))

    @property
    def dims(self) -> list[Optional[int]]:
        """Per-field element counts (None while unknown: not declared and not yet seen)."""
        return [s if s is not None else d for s, d in zip(self._seen_dims, self._dims)]

    @property
    def dim(self) -> Optional[int]:
        """Length of :meth:`vector` (None until every field's size is known)."""
        dims = self.dims
        return None if any(d is None for d in dims) else int(sum(dims))  # type: ignore[arg-type]

    def element_names(self) -> list[str]:
        names: list[str] = []
        for spec, d in zip(self.specs, self.dims):
            names += element_names(spec, d or 0)
        return names

    def field_name(self, i: int, element: Optional[int] = None) -> str:
        """``topic:field``, or with ``element`` the element's name (``/joint_states:position[elbow]``)."""
        spec = self.specs[i]
        if element is None:
            return f"{spec.topic}:{spec.field}"
        names = element_names(spec, self.dims[i] or (element + 1))
        return names[element] if 0 <= element < len(names) else f"{spec.topic}:{spec.field}[{element}]"

    def max_age_ns(self, i: int) -> Optional[int]:
        """The maximum age of field ``i``'s samples [ns] (None: no limit)."""
        return self._max_age[i]

    # ----------------------------------------------------------------- updates
    def update(self, topic: str, msg: Any, recv_ns: int, msgtype: str = "", ros_ns: Optional[int] = None) -> list[int]:
        """Take the fields of ``topic`` from ``msg`` received at ``recv_ns`` (and ``ros_ns`` in ROS
        time, default ``recv_ns``).

        Returns the indices of the fields that got a new sample (empty for a topic no field uses,
        or a sample whose stamp did not advance). A message that cannot be read (wrong type,
        missing joint or field, dimension change) raises :class:`UserError` after marking the
        fields it feeds ``rejected`` (so a consumer stops instead of using their older values).
        """
        idx = self._by_topic.get(topic)
        if not idx:
            return []
        recv_ns = int(recv_ns)
        ros = recv_ns if ros_ns is None else int(ros_ns)
        msgtype = msgtype or self._types.get(topic, "")
        hdr = header_stamp_ns(msg)
        updated: list[int] = []
        error: Optional[UserError] = None
        for i in idx:
            spec = self.specs[i]
            stamp, fresh, by_header, clock = ros, recv_ns, False, None
            if hdr is not None and spec.stamp == "header":
                lag = ros - hdr
                if abs(lag) > self.clock_tolerance_ns:
                    # Kept (at its receive time) for a recording, but marked: a controller stops.
                    side = "behind" if lag > 0 else "ahead of"
                    clock = ("clock", f"header stamp {abs(lag) / 1e9:.3f} s {side} the receive time (more "
                                      f"than {self.clock_tolerance_ns / 1e9:g} s: clocks not synchronised? set "
                                      "'stamp: receive' for this field)", hdr)
                else:
                    stamp, fresh, by_header = hdr, recv_ns - max(0, lag), True
            prev = self._stamps[i]
            if by_header and prev is not None and stamp <= prev and self._values[i] is not None:
                self._repeats[i] += 1  # not new: a frozen driver must go stale
                continue
            try:
                value, base = extract_with_size(spec, msg, msgtype)
            except UserError as exc:
                self._errors[i] = ("rejected", str(exc), stamp)
                error = error or exc
                continue
            seen = self._base_dims[i]
            if seen is None:
                self._base_dims[i] = base
                self._seen_dims[i] = len(value)
            elif seen != base:
                changed = UserError(f"topic '{topic}' field '{spec.field}': dimension changed from {seen} to {base}")
                self._errors[i] = ("rejected", str(changed), stamp)
                error = error or changed
                continue
            self._values[i] = value
            self._stamps[i] = stamp
            self._fresh[i] = fresh
            self._recv[i] = recv_ns
            self._errors[i] = clock
            self._repeats[i] = 0
            ok = np.isfinite(value) & (np.abs(value) <= self.max_abs)
            self._bad[i] = None if ok.all() else int(np.argmin(ok))
            updated.append(i)
        if error is not None:
            raise error
        return updated

    def value(self, i: int) -> Optional[np.ndarray]:
        """Latest value of field ``i`` (None before its first message)."""
        return self._values[i]

    def stamp_ns(self, i: int) -> Optional[int]:
        """Stamp of field ``i``'s latest sample in ROS time (header stamp or receive time)."""
        return self._stamps[i]

    def sample_ns(self, i: int) -> Optional[int]:
        """Time of field ``i``'s latest sample on the caller's clock (receive time less the
        transport delay its header stamp shows)."""
        return self._fresh[i]

    def age_ns(self, i: int, now_ns: int) -> Optional[int]:
        """Age of field ``i``'s latest sample at ``now_ns`` (caller's clock), None before one."""
        f = self._fresh[i]
        return None if f is None else int(now_ns) - f

    def reset(self) -> None:
        """Forget all values (sizes already seen stay fixed)."""
        n = len(self.specs)
        self._values = [None] * n
        self._stamps = [None] * n
        self._fresh = [None] * n
        self._recv = [None] * n
        self._errors = [None] * n
        self._bad = [None] * n
        self._repeats = [0] * n

    # ----------------------------------------------------------------- queries
    def ready(self) -> bool:
        """True when every field has a value."""
        return all(v is not None for v in self._values)

    def missing(self) -> list[str]:
        """``topic:field`` of the fields still without a value."""
        return [f"{s.topic}:{s.field}" for s, v in zip(self.specs, self._values) if v is None]

    def oldest_stamp_ns(self) -> Optional[int]:
        """Sample time (caller's clock) of the stalest field; None until :meth:`ready`."""
        if not self.ready():
            return None
        return min(self._fresh)  # type: ignore[type-var]

    def faults(self, now_ns: int) -> list[FieldFault]:
        """Every reason not to use the current vector at ``now_ns`` (caller's clock), one per
        field at most, in spec order; empty when :meth:`vector` may be used."""
        out: list[FieldFault] = []
        for i, v in enumerate(self._values):
            err = self._errors[i]
            if err is not None:
                out.append(FieldFault(err[0], i, self.field_name(i), err[2], err[1]))
                continue
            if v is None:
                out.append(FieldFault("waiting", i, self.field_name(i), None, "no sample yet"))
                continue
            limit = self._max_age[i]
            age = int(now_ns) - self._fresh[i]  # type: ignore[operator]
            if limit is not None and age > limit:
                rep = self._repeats[i]
                kind = "frozen" if rep else "stale"
                more = f"; {rep} later sample(s) repeated its stamp" if rep else ""
                out.append(FieldFault(kind, i, self.field_name(i), self._stamps[i],
                                      f"newest sample {age / 1e6:.1f} ms old (max_age {limit / 1e6:.1f} ms){more}"))
                continue
            k = self._bad[i]
            if k is not None:
                out.append(self._bad_fault(i, k))
        return out

    def _bad_fault(self, i: int, k: int) -> FieldFault:
        x = float(self._values[i][k])  # type: ignore[index]
        if math.isnan(x) or math.isinf(x):
            kind, what = "nonfinite", "NaN" if math.isnan(x) else "inf"
        else:
            kind, what = "range", f"{x:.6g} (|x| > {self.max_abs:g})"
        return FieldFault(kind, i, self.field_name(i, k), self._stamps[i], f"element {k} is {what}")

    def bad_fields(self) -> list[int]:
        """Indices of fields whose current value has NaN/inf or exceeds ``max_abs``."""
        return [i for i, k in enumerate(self._bad) if k is not None and self._values[i] is not None]

    def finite(self) -> bool:
        """True when every current value is finite and within ``max_abs`` (unset fields pass)."""
        return not self.bad_fields()

    def describe_bad(self, i: int, when: Optional[str] = None) -> str:
        """One line naming field ``i``'s non-finite or out-of-range value (``when`` replaces
        the default ``at stamp <s> s``)."""
        spec, v, st = self.specs[i], self._values[i], self._stamps[i]
        assert v is not None
        k = self._bad[i] or 0
        x = float(v[k])
        what = "NaN" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.6g} (|x| > {self.max_abs:g})")
        when = when or f"at stamp {(st or 0) * 1e-9:.3f} s"
        comp = self.field_name(i, k).rsplit("[", 1)[-1].rstrip("]")
        comp = "" if comp == str(k) else comp
        return f"topic '{spec.topic}' field '{spec.field}': element {k}{f' ({comp})' if comp else ''} is {what} {when}"

    def vector(self) -> np.ndarray:
        """Concatenated float64 vector of all fields (spec order), shape ``(dim,)``.

        Raises UserError when a field has no value yet or a value is NaN/inf/beyond ``max_abs``.
        Freshness is not checked here: see :meth:`faults`.
        """
        if not self.ready():
            raise UserError(f"no value yet for {', '.join(self.missing())}")
        bad = self.bad_fields()
        if bad:
            raise UserError(self.describe_bad(bad[0]))
        return np.concatenate(self._values)  # type: ignore[arg-type]
