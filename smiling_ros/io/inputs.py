"""Reading files the project did not write itself, safely: the one place where an input path is
checked and opened, and where JSON/YAML text is parsed with bounds.

- :func:`check_file` / :func:`check_dir`: a path is the kind of thing expected (a regular file, a
  directory) before anything opens it. A FIFO, socket or device file is refused (opening a FIFO
  blocks until a writer comes; reading ``/dev/zero`` never ends).
- :func:`read_bytes` / :func:`read_text`: open without blocking, check the open file (not only
  the name) is regular, and refuse one larger than ``max_bytes`` before reading it.
- :func:`parse_json`: JSON with its size and nesting depth bounded (deep nesting would otherwise
  end in ``RecursionError``).
- :func:`parse_yaml`: YAML with libyaml's C parser where present, duplicate keys refused (naming
  the key and line), aliases counted and the expanded size of the document bounded (an alias
  bomb is a few hundred bytes that expand to billions of nodes), nesting depth bounded.

Every failure is a one-line :class:`~smiling_ros.errors.UserError` naming the file.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Optional

from smiling_ros.errors import UserError

MAX_TEXT_BYTES = 64 * 1024 * 1024  # configs, metadata, JSON documents
MAX_DEPTH = 64  # nesting of JSON/YAML containers
MAX_YAML_ALIASES = 100  # alias (*name) uses in one document
MAX_YAML_NODES = 1_000_000  # nodes after expanding aliases


def describe_mode(mode: int) -> str:
    """'a FIFO', 'a character device', ... for a stat mode that is not a file or directory."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _stat(p: Path, what: str) -> os.stat_result:
    """``os.stat`` (links followed) with one-line errors naming ``what``."""
    try:
        return os.stat(p)
    except FileNotFoundError:
        raise UserError(f"{p}: {what} not found") from None
    except OSError as exc:
        raise UserError(f"{p}: cannot read {what} ({exc.strerror})") from None


def check_file(path: str | Path, what: str = "file") -> os.stat_result:
    """Refuse anything at ``path`` but an existing regular file (symbolic links are followed)."""
    p = Path(path)
    st = _stat(p, what)
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{p}: cannot read {what} (it is {describe_mode(st.st_mode)}, not a regular file)")
    return st


def check_dir(path: str | Path, what: str = "directory") -> os.stat_result:
    """Refuse anything at ``path`` but an existing directory."""
    p = Path(path)
    st = _stat(p, what)
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{p}: is {describe_mode(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'a file'}, "
                        f"not a directory ({what} expected)")
    return st


def is_regular(path: str | Path) -> bool:
    """True for an existing regular file (following links); never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_bytes(path: str | Path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The content of a regular file of at most ``max_bytes`` bytes.

    The file is opened with ``O_NONBLOCK`` (a FIFO swapped in after a check cannot block the open)
    and checked with ``fstat`` on the open descriptor, so what is read is what was checked."""
    p = Path(path)
    check_file(p, what)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UserError(f"{p}: cannot read {what} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{p}: cannot read {what} (it is {describe_mode(st.st_mode)}, not a regular file)")
        if st.st_size > max_bytes:
            raise UserError(f"{p}: {what} is {st.st_size} bytes, more than the {max_bytes} accepted")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise UserError(f"{p}: {what} is more than the {max_bytes} bytes accepted")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise UserError(f"{p}: cannot read {what} ({exc.strerror})") from None
    finally:
        os.close(fd)


def read_text(path: str | Path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """:func:`read_bytes` decoded as UTF-8 (a decoding error names the byte offset)."""
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None


# --------------------------------------------------------------------------- JSON
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """Maximum nesting depth of the containers in JSON ``text`` (strings skipped; no parsing)."""
    depth = best = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            best = max(best, depth)
        else:
            depth -= 1
    return best


def parse_json(text: str | bytes, where: str, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_TEXT_BYTES) -> Any:
    """Parse a JSON document from an untrusted place with size and nesting bounded."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{where}: not UTF-8 JSON (byte {exc.start})") from None
    if len(text) > max_bytes:
        raise UserError(f"{where}: JSON document of {len(text)} characters, more than the {max_bytes} accepted")
    depth = json_depth(text)
    if depth > max_depth:
        raise UserError(f"{where}: JSON nested {depth} levels deep (at most {max_depth} accepted)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: corrupt JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply") from None


def load_json_file(path: str | Path, what: str = "JSON file", max_bytes: int = MAX_TEXT_BYTES,
                   max_depth: int = MAX_DEPTH) -> Any:
    """Read and parse a JSON file (regular file, bounded size and depth)."""
    return parse_json(read_bytes(path, what, max_bytes), str(path), max_depth, max_bytes)


# --------------------------------------------------------------------------- YAML
def _loader_base():
    import yaml

    return getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


_LOADER: Optional[type] = None


def yaml_loader() -> type:
    """A SafeLoader (libyaml's C parser where present) that refuses duplicate mapping keys."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    base = _loader_base()

    class StrictLoader(base):  # type: ignore[misc, valid-type]
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # '<<' merges; keys written beside it override the merged ones
                    key = self.construct_object(key_node, deep=True)
                    try:
                        hash(key)
                    except TypeError:
                        raise yaml.constructor.ConstructorError(
                            None, None, "found an unhashable mapping key", key_node.start_mark) from None
                    line = key_node.start_mark.line + 1 if key_node.start_mark else 0
                    if key in seen:
                        raise DuplicateKey(key, line, seen[key])
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    _LOADER = StrictLoader
    return StrictLoader


class DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


def _check_nodes(node, where: str, max_nodes: int, max_aliases: int, max_depth: int) -> None:
    """Count aliases (a node reached more than once) and the size the document expands to."""
    import yaml

    size: dict[int, int] = {}
    active: set[int] = set()
    aliases = 0

    def visit(n, depth: int) -> int:
        nonlocal aliases
        key = id(n)
        if key in size:
            aliases += 1
            if aliases > max_aliases:
                raise UserError(f"{where}: more than {max_aliases} YAML aliases (*name); refusing to expand them")
            return size[key]
        if key in active:
            raise UserError(f"{where}: recursive YAML alias (a node contains itself)")
        if depth > max_depth:
            raise UserError(f"{where}: YAML nested more than {max_depth} levels deep")
        total = 1
        if isinstance(n, (yaml.SequenceNode, yaml.MappingNode)):
            active.add(key)
            items = n.value if isinstance(n, yaml.SequenceNode) else [x for kv in n.value for x in kv]
            for child in items:
                total += visit(child, depth + 1)
                if total > max_nodes:
                    raise UserError(f"{where}: YAML document expands to more than {max_nodes} nodes "
                                    "(alias bomb?); refusing it")
            active.discard(key)
        size[key] = total
        return total

    visit(node, 0)


def parse_yaml(text: str | bytes, where: str, max_nodes: int = MAX_YAML_NODES,
               max_aliases: int = MAX_YAML_ALIASES, max_depth: int = MAX_DEPTH,
               max_bytes: int = MAX_TEXT_BYTES) -> Any:
    """Parse one YAML document from an untrusted place, with the bounds of the module docstring."""
    import yaml

    if len(text) > max_bytes:
        raise UserError(f"{where}: YAML document of {len(text)} bytes, more than the {max_bytes} accepted")
    loader = yaml_loader()(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise UserError(f"{where}: YAML nested too deeply") from None
        if node is None:
            return None
        _check_nodes(node, where, max_nodes, max_aliases, max_depth)
        try:
            return loader.construct_document(node)
        except DuplicateKey as exc:
            raise UserError(f"{where}: duplicate key '{exc.key}' at line {exc.line} (first at line {exc.first})") \
                from None
        except RecursionError:
            raise UserError(f"{where}: YAML nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        raise UserError(f"{where}: not valid YAML{line}" + (f" ({problem})" if problem else "")) from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, what: str = "YAML file", max_bytes: int = MAX_TEXT_BYTES) -> Any:
    """Read and parse a YAML file (regular file, bounded size, aliases, depth; no duplicate keys)."""
    return parse_yaml(read_text(path, what, max_bytes), str(path), max_bytes=max_bytes)
