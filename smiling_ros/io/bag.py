"""rosbag2 files through the ``rosbags`` library (no rosbag2_py needed).

Writing: :class:`BagWriter` (MCAP by default, or sqlite3), the format ``ros2 bag record`` writes.

Reading: :func:`open_bag` / :class:`BagReader` open any rosbag2 recording: a directory with
``metadata.yaml`` (MCAP or sqlite3, split into several files or not), a bare ``.mcap`` or ``.db3``
file, or a directory whose ``metadata.yaml`` is missing (a recording that was killed before it
closed) but which holds the storage files. Message types come from the definitions the bag carries
(MCAP schemas, sqlite3 ``message_definitions``), so custom messages deserialise; types the bag does
not define come from the ROS 2 Jazzy store. Every failure is a one-line :class:`UserError` naming
the file (and topic, for message errors).
"""
from __future__ import annotations

import heapq
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

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
        self._writer: Optional[Writer] = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.STORAGE_PLUGINS = {**Writer.STORAGE_PLUGINS, StoragePlugin.MCAP: _crc_mcap_writer()}
        self._writer.open()
        self._conns: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def _open(self) -> Any:
        if self._writer is None:
            raise UserError(f"{self.path}: the bag is closed")
        return self._writer

    def add_topic(self, topic: str, msgtype: str) -> None:
        if topic in self._conns:
            return
        if msgtype not in self.store.fielddefs:
            raise UserError(f"topic '{topic}': message type '{msgtype}' is not known to the bag writer")
        self._conns[topic] = self._open().add_connection(topic, msgtype, typestore=self.store)
        self.counts[topic] = 0

    def write(self, topic: str, timestamp_ns: int, data: bytes | memoryview) -> None:
        self._open().write(self._conns[topic], int(timestamp_ns), data)
        self.counts[topic] += 1

    def write_msg(self, topic: str, timestamp_ns: int, msg, msgtype: Optional[str] = None) -> None:
        if topic not in self._conns:
            self.add_topic(topic, msgtype or msg.__msgtype__)
        self.write(topic, timestamp_ns, self.store.serialize_cdr(msg, msgtype or msg.__msgtype__))

    def flush(self) -> None:
        """Make everything written so far survive a crash of this process (SIGKILL, not power loss).

        MCAP: rosbags keeps the open chunk in memory (up to 1 MiB); it is closed (written with its
        message indexes) and the file buffer handed to the OS. A file cut off after this reads back
        up to here with ``open_bag(..., salvage=True)``. sqlite3: the open transaction is committed.
        """
        storage: Any = None if self._writer is None else self._writer.storage
        if storage is None:
            return
        chunk = getattr(storage, "chunk", None)
        if chunk is not None:  # rosbags McapWriter
            if chunk.msgs:  # only chunks with messages (schemas/channels then go with the next one)
                storage.close_chunk()
            storage.bio.flush()
        conn = getattr(storage, "conn", None)
        if conn is not None:  # rosbags Sqlite3Writer
            conn.commit()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _crc_mcap_writer():
    """rosbags' MCAP writer, with each chunk's CRC-32 filled in (rosbags writes 0, "no checksum";
    readers, rosbags' own included, then detect a changed byte inside a chunk)."""
    import zlib

    from rosbags.rosbag2.storage_mcap import McapWriter

    class CrcMcapWriter(McapWriter):
        def close_chunk(self) -> None:
            crc = zlib.crc32(self.chunk.bio.getbuffer())
            start = self.bio.tell()
            super().close_chunk()
            end = self.bio.tell()
            # chunk record: opcode (1), length (8), start time, end time, uncompressed size (3 x 8), CRC (4)
            self.bio.seek(start + 9 + 24)
            self.bio.write(struct.pack("<I", crc))
            self.bio.seek(end)

    return CrcMcapWriter


# =========================================================================== reading
MCAP_MAGIC = b"\x89MCAP0\r\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
_MAX_DETAIL = 200  # characters of a library's error message kept in ours
LOG_TIME_LIMIT = 2**63  # MCAP log times are uint64; rosbag2 and numpy keep them as int64
MAX_METADATA_BYTES = 16 * 1024 * 1024


@dataclass
class BagTopic:
    """One topic of a bag: name, ROS message type (``pkg/msg/Type``) and message count."""

    name: str
    msgtype: str
    count: int


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _sniff(path: Path) -> Optional[str]:
    """Storage of a file from its first bytes: 'mcap', 'sqlite3' or None."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if head.startswith(MCAP_MAGIC):
        return "mcap"
    if head.startswith(SQLITE_MAGIC):
        return "sqlite3"
    return None


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > _MAX_DETAIL:
        text = text[: _MAX_DETAIL - 3] + "..."
    return text


def _explain(exc: BaseException, storage: str) -> str:
    """A library exception raised while reading -> the user-facing reason."""
    text = _detail(exc)
    if isinstance(exc, MemoryError):
        return "corrupt file (a record claims an impossible size)"
    if storage == "mcap":
        if "end magic" in text or "footer" in text.lower():
            return (
                "truncated or corrupt MCAP (no valid footer: the recording was not closed cleanly; "
                "--salvage reads the complete chunks)"
            )
        if isinstance(exc, (TypeError, struct.error, IndexError, EOFError)) or "runcated" in text:
            return f"truncated or corrupt MCAP (a record ends early or is malformed: {text})"
        return f"corrupt MCAP ({text})"
    if storage == "sqlite3":
        return f"corrupt sqlite3 database ({text})"
    return f"unreadable bag ({text})"


def _salvaging_mcap_reader():
    """An MCAP storage reader that also opens files without footer/summary (killed recordings):
    it keeps every complete record up to the first truncated one."""
    from rosbags.rosbag2.errors import ReaderError
    from rosbags.rosbag2.storage_mcap import McapReader

    class SalvagingMcapReader(McapReader):
        salvaged_bytes: int = 0

        def _open(self) -> None:  # noqa: D401 - rosbags hook
            try:
                super()._open()
                return
            except ReaderError as exc:
                if "end magic" not in str(exc) and "footer" not in str(exc).lower():
                    raise
            bio = self.bio
            assert bio is not None
            size = bio.seek(0, 2)
            pos = self.data_start
            while pos + 9 <= size:
                bio.seek(pos)
                op = bio.read(1)[0]
                (length,) = struct.unpack("<Q", bio.read(8))
                if op in (0x02, 0x0F) or pos + 9 + length > size:  # footer, data end, or cut off
                    break
                pos += 9 + length
            self.data_end = pos
            self.salvaged_bytes = size - pos
            self.schemas.clear()
            self.channels.clear()
            self.connections.clear()
            self.chunks.clear()
            self.meta_scan()
            assert self.statistics is not None
            st = self.statistics
            self.connections = [
                c._replace(msgcount=st.channel_message_counts.get(c.id, 0)) for c in self.connections
            ]
            n = st.message_count
            self.metadata = self.metadata._replace(
                duration=st.end_time - st.start_time + 1 if n else 0,
                start_time=st.start_time if n else 2**63 - 1,
                end_time=st.end_time + 1 if n else 0,
                message_count=n,
            )

    return SalvagingMcapReader


def build_typestore(connections) -> tuple[Any, list[str]]:
    """A typestore with the bag's own message definitions, completed from ROS 2 Jazzy.

    Returns ``(store, ignored)``: ``ignored`` lists types whose embedded definition could not be
    parsed (they fall back to Jazzy's definition, if it has one).
    """
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

    typs: dict[str, Any] = {}
    ignored: list[str] = []
    for conn in connections:
        fmt, data = conn.msgdef.format, conn.msgdef.data
        try:
            if fmt == MessageDefinitionFormat.MSG and data:
                typs.update(get_types_from_msg(data, conn.msgtype))
            elif fmt == MessageDefinitionFormat.IDL and data:
                sep = "=" * 80 + "\n"
                if data.startswith(f"{sep}IDL: "):
                    for part in data.split(sep)[1:]:
                        typs.update(get_types_from_idl(part.split("\n", 1)[1]))
                else:
                    typs.update(get_types_from_idl(data))
        except Exception:  # noqa: BLE001 - a bag's definition text is untrusted input
            ignored.append(conn.msgtype)
    base = typestore()
    if not typs:
        return base, ignored

    def fields(defn):
        return [(f[0].lower(), f[1]) for f in defn[1]]

    conflicts = [n for n, d in typs.items() if n in base.fielddefs and fields(base.fielddefs[n]) != fields(d)]
    new = {n: d for n, d in typs.items() if n not in base.fielddefs}
    if not conflicts:  # the common case: the bag's types are Jazzy's, plus perhaps custom ones
        if new:
            try:
                base.register(new)
            except Exception:  # noqa: BLE001
                return typestore(), ignored + sorted(new)
        return base, ignored
    merged = dict(base.fielddefs)
    merged.update(typs)
    store = get_typestore(Stores.EMPTY)
    try:
        store.register(merged)
    except Exception:  # noqa: BLE001 - inconsistent embedded definitions: use Jazzy's
        return base, ignored + sorted(typs)
    return store, ignored


class BagReader:
    """Read a rosbag2 recording (see the module docstring for what opens).

    Attributes: ``path`` (as given), ``storage`` ('mcap' or 'sqlite3'), ``files`` (storage files
    read), ``topics`` (name -> :class:`BagTopic`), ``message_count``, ``start_ns``/``end_ns`` (bag
    receive times of the first and after the last message), ``typestore``,
    ``salvaged_bytes`` (bytes dropped from a truncated MCAP opened with ``salvage=True``).
    """

    def __init__(self, path: str | Path, salvage: bool = False):
        self.path = Path(path)
        self.salvage = salvage
        self.salvaged_bytes = 0
        self._sources: list[tuple[Any, Path, str]] = []  # (rosbags reader, file/dir, storage)
        self._resolve_and_open()
        try:
            self._collect()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening
    def _resolve_and_open(self) -> None:
        from smiling_ros.io.inputs import check_file

        p = self.path
        if str(p) == "":
            raise UserError("bag: empty path")
        if not p.exists():
            raise UserError(f"{p}: bag not found")
        if p.name == "metadata.yaml" and not p.is_dir():
            check_file(p, "bag metadata")
            p = p.parent
        if p.is_dir():
            if os.path.lexists(p / "metadata.yaml"):
                self._open_directory(p)
                return
            files = sorted(
                [f for f in p.iterdir() if f.is_file() and f.suffix in STORAGE_SUFFIXES], key=_natural_key
            )
            if not files:
                raise UserError(f"{p}: not a rosbag2 directory (no metadata.yaml and no .mcap or .db3 file)")
            for f in files:
                self._open_file(f)
            return
        self._open_file(p)

    def _open_directory(self, d: Path) -> None:
        from rosbags.rosbag2.reader import DirectoryReader

        from smiling_ros.io.inputs import check_file, parse_yaml, read_text

        meta = parse_yaml(read_text(d / "metadata.yaml", "bag metadata", MAX_METADATA_BYTES), str(d / "metadata.yaml"),
                          max_bytes=MAX_METADATA_BYTES)
        try:
            info = meta["rosbag2_bagfile_information"]
            storage = str(info["storage_identifier"])
            listed = [str(f) for f in info.get("relative_file_paths") or []]
        except Exception as exc:  # noqa: BLE001 - any malformed metadata
            raise UserError(f"{d / 'metadata.yaml'}: not valid rosbag2 metadata ({_detail(exc)})") from None
        for name in listed:  # storage files: regular files inside the bag, never a FIFO or device
            f = d / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise UserError(f"{d / 'metadata.yaml'}: storage file '{name}' is outside the bag directory")
            if os.path.lexists(f):
                check_file(f, "bag storage file")
        if storage not in ("mcap", "sqlite3"):
            raise UserError(f"{d}: unknown storage '{storage}' in metadata.yaml (supported: mcap, sqlite3)")
        reader = DirectoryReader(d)
        if self.salvage and storage == "mcap":
            reader.STORAGE_PLUGINS = {**DirectoryReader.STORAGE_PLUGINS, "mcap": _salvaging_mcap_reader()}
        try:
            reader.open()
        except Exception as exc:  # noqa: BLE001 - untrusted file content
            text = _detail(exc)
            if "files are missing" in text:
                raise UserError(f"{d}: storage file listed in metadata.yaml is missing ({text})") from None
            raise UserError(f"{d}: {_explain(exc, storage)}") from None
        self.salvaged_bytes += sum(getattr(s, "salvaged_bytes", 0) for s in reader.storages)
        self._sources.append((reader, d, storage))

    def _open_file(self, f: Path) -> None:
        from rosbags.rosbag2.storage_mcap import McapReader
        from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader

        from smiling_ros.io.inputs import check_file

        if f.suffix == ".bag":
            raise UserError(f"{f}: a ROS 1 bag; convert it to rosbag2 first (rosbags-convert)")
        check_file(f, "bag file")
        if f.stat().st_size == 0:
            raise UserError(f"{f}: empty file (0 bytes)")
        storage = _sniff(f)
        if storage is None:
            if f.suffix == ".mcap":
                raise UserError(f"{f}: corrupt MCAP (bad magic bytes: not an MCAP file)")
            if f.suffix == ".db3":
                raise UserError(f"{f}: corrupt sqlite3 database (bad header: not an SQLite file)")
            raise UserError(f"{f}: unknown storage (expected a rosbag2 directory, a .mcap or a .db3 file)")
        cls = Sqlite3Reader if storage == "sqlite3" else (_salvaging_mcap_reader() if self.salvage else McapReader)
        reader = cls(f)
        try:
            reader.open()
        except Exception as exc:  # noqa: BLE001 - untrusted file content
            raise UserError(f"{f}: {_explain(exc, storage)}") from None
        self.salvaged_bytes += getattr(reader, "salvaged_bytes", 0)
        self._sources.append((reader, f, storage))

    def _collect(self) -> None:
        storages = {s for _, _, s in self._sources}
        self.storage = storages.pop() if len(storages) == 1 else "+".join(sorted(storages))
        self.files = [p for _, p, _ in self._sources]
        topics: dict[str, BagTopic] = {}
        conns = []
        self.message_count = 0
        self.start_ns = 2**63 - 1
        self.end_ns = 0
        for reader, _, _ in self._sources:
            conns += list(reader.connections)
            md = reader.metadata
            self.message_count += int(md.message_count)
            for name, value in (("start", md.start_time), ("end", md.end_time)):
                if md.message_count and not 0 <= int(value) <= LOG_TIME_LIMIT:
                    raise UserError(f"{self.path}: bag {name} time {int(value)} ns is outside [0, 2^63] "
                                    "(corrupt timestamps)")
            if md.message_count:
                self.start_ns = min(self.start_ns, int(md.start_time))
                self.end_ns = max(self.end_ns, int(md.end_time))
        for c in conns:
            t = topics.get(c.topic)
            if t is None:
                topics[c.topic] = BagTopic(c.topic, c.msgtype, int(c.msgcount))
            else:
                if c.msgtype != t.msgtype and c.msgtype not in t.msgtype.split("|"):
                    t.msgtype = f"{t.msgtype}|{c.msgtype}"
                t.count += int(c.msgcount)
        self.topics = topics
        self.connections = conns
        self.typestore, self.ignored_definitions = build_typestore(conns)
        if self.start_ns > self.end_ns:
            self.start_ns = self.end_ns = 0

    # ------------------------------------------------------------------ reading
    def describe_topics(self) -> str:
        """``/a (pkg/msg/T, N msgs), /b (...)`` for error messages."""
        if not self.topics:
            return "none"
        return ", ".join(f"{t.name} ({t.msgtype}, {t.count})" for t in sorted(self.topics.values(), key=lambda t: t.name))

    def knows_type(self, msgtype: str) -> bool:
        return msgtype in self.typestore.fielddefs

    def messages(self, topics: Optional[set[str]] = None) -> Iterator[tuple[str, str, int, Any]]:
        """Raw messages ``(topic, msgtype, stamp_ns, cdr_bytes)`` in receive-time order.

        ``stamp_ns`` is the time the recorder received the message (rosbag2's timestamp).
        """
        streams = [self._stream(r, p, s, topics) for r, p, s in self._sources]
        if len(streams) == 1:
            yield from streams[0]
        else:
            yield from heapq.merge(*streams, key=lambda m: m[2])

    def _stream(self, reader, path: Path, storage: str, topics) -> Iterator[tuple[str, str, int, Any]]:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if not conns:
            return
        try:
            it = reader.messages(conns)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{path}: {_explain(exc, storage)}") from None
        while True:
            try:
                conn, stamp, data = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - untrusted file content
                raise UserError(f"{path}: {_explain(exc, storage)}") from None
            stamp = int(stamp)
            if not 0 <= stamp < LOG_TIME_LIMIT:
                raise UserError(f"{path}: topic '{conn.topic}': message log time {stamp} ns is outside "
                                f"[0, 2^63) (corrupt timestamp)")
            yield conn.topic, conn.msgtype, stamp, data

    def deserialize(self, data, msgtype: str, topic: str = "", stamp_ns: int = 0):
        """CDR bytes -> message object; a corrupt message is a UserError naming topic and time."""
        try:
            return self.typestore.deserialize_cdr(data, msgtype)
        except Exception as exc:  # noqa: BLE001 - untrusted bytes
            if msgtype not in self.typestore.fielddefs:
                raise UserError(
                    f"{self.path}: topic '{topic}': message type {msgtype} is unknown "
                    "(the bag carries no definition for it)"
                ) from None
            raise UserError(
                f"{self.path}: topic '{topic}': cannot decode message at {self.rel_s(stamp_ns):.3f} s "
                f"as {msgtype} ({_detail(exc)})"
            ) from None

    def read(self, topics: Optional[set[str]] = None) -> Iterator[tuple[str, str, int, Any]]:
        """Deserialised messages ``(topic, msgtype, stamp_ns, msg)`` in receive-time order."""
        for topic, msgtype, stamp, data in self.messages(topics):
            yield topic, msgtype, stamp, self.deserialize(data, msgtype, topic, stamp)

    def rel_s(self, stamp_ns: int) -> float:
        """Seconds since the bag's first message."""
        return (int(stamp_ns) - self.start_ns) * 1e-9 if self.start_ns else int(stamp_ns) * 1e-9

    def close(self) -> None:
        sources, self._sources = self._sources, []
        for reader, _, _ in sources:
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - closing a half-open corrupt file
                pass

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def open_bag(path: str | Path, salvage: bool = False) -> BagReader:
    """Open any rosbag2 recording for reading (see :class:`BagReader`)."""
    return BagReader(path, salvage=salvage)
