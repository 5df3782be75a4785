"""Writing outputs: one place that decides whether a command may write where it was told to, locks
it for that writer, writes atomically and turns OS errors into one line.

Every command that writes (datasets, run directories, checkpoints, logs, plots, results) does::

    from smiling_ros.io.outputs import prepare_output

    with prepare_output(args.out, "dir", overwrite=args.overwrite) as out:   # a run directory
        ...
        out.write_text("summary.json", text)          # atomic; a name relative to the directory
        with out.atomic("curve.png") as tmp:          # any writer: write tmp, it is renamed on success
            fig.savefig(tmp)

    with prepare_output(args.out, "file", overwrite=args.overwrite,
                        also=[sibling(args.out, ".json"), sibling(args.out, "_log.csv")]) as out:
        save_checkpoint(out.path, tensors, meta)       # a checkpoint file and the files beside it

Rules (each refusal is a :class:`UserError` naming the path, before anything is written):

- The name is taken literally: ``--out model.v2`` writes ``model.v2``, never ``model.safetensors``.
  Files written beside a file output are named by :func:`sibling` (``model.v2.json``,
  ``run.safetensors`` -> ``run.json``) and listed in ``also`` so they are checked too.
- Nothing the user did not name is replaced: an existing file output (or any ``also`` file), or a
  non-empty directory output, is refused unless ``overwrite`` (the ``--overwrite`` flag of every
  verb) is given; ``resume`` accepts an existing run directory. Overwriting replaces only the files
  the command writes; other files in a directory stay.
- An empty name, ``.``, the current directory or one above it, the root, a symbolic link as the
  output itself, a directory where a file is expected and a file (or FIFO, device, ...) where a
  directory is expected are refused.
- One writer per output: ``prepare_output`` takes an exclusive ``fcntl.flock`` on the lock file
  ``.NAME.lock`` beside the output (the holder's pid is written in it); a second writer fails at
  once with one line naming the holder's pid. The lock file is removed on release.
- Directories that ``prepare_output`` created and that are still empty when it is released (the
  command failed before writing) are removed again: a failed command leaves nothing behind.
- Atomic writes go to a temporary file in the same directory, are fsynced and renamed into place
  with the permissions of a normal new file (``public_mode``); a failure removes the temporary.
- OS errors inside the ``with`` block (read-only directory, full disk, ...) become one line
  ``PATH: cannot OPERATION (reason)``; see :func:`os_error`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional

from smiling_ros.errors import UserError

CHECKPOINT_SUFFIX = ".safetensors"


# --------------------------------------------------------------------------- names and errors
def sibling(path: str | Path, tag: str) -> Path:
    """A file written beside ``path``: ``tag`` replaces a ``.safetensors`` suffix, otherwise it is
    appended to the whole name (``a.safetensors`` + ``.json`` -> ``a.json``; ``a.v2`` -> ``a.v2.json``)."""
    p = Path(path)
    name = p.name[: -len(CHECKPOINT_SUFFIX)] if p.name.endswith(CHECKPOINT_SUFFIX) else p.name
    return p.with_name(name + tag)


def os_error(exc: OSError, path: Optional[str | Path] = None, operation: str = "write") -> UserError:
    """An OS error as one user-facing line: ``PATH: cannot OPERATION (reason)``."""
    where = path if path is not None else (exc.filename or "")
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    elif exc.errno == errno.EROFS:
        reason = "read-only file system"
    elif exc.errno == errno.EFBIG:
        reason = "file too large (size limit reached)"
    return UserError(f"{where}: cannot {operation} ({reason})")


@contextlib.contextmanager
def os_errors(operation: str, path: Optional[str | Path] = None) -> Iterator[None]:
    """Turn OS errors inside the block into :func:`os_error` lines."""
    try:
        yield
    except UserError:
        raise
    except OSError as exc:
        raise os_error(exc, path if path is not None else exc.filename, operation) from None


def public_mode(directory: bool = False) -> int:
    """Permissions of a normal new file (or directory) under the process umask (files from
    ``tempfile`` are private, 0600/0700, which would hide outputs from other users)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path, operation: str = "write") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsynced and renamed onto
    ``target`` with :func:`public_mode` permissions; on failure it is removed. OS errors become one
    line naming ``target``."""
    target = Path(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise os_error(exc, target, operation) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with os_errors(operation, target):
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, public_mode())
            os.replace(tmp, target)
    except OSError as exc:
        raise os_error(exc, target, operation) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    """Write ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(target)


def atomic_write_text(target: str | Path, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


# --------------------------------------------------------------------------- locking
def lock_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(f".{p.name}.lock")


class _Lock:
    """An exclusive flock on ``.NAME.lock`` beside an output (removed on release)."""

    def __init__(self, output: Path):
        self.output = output
        self.path = lock_path(output)
        self.fd: Optional[int] = None

    def acquire(self) -> None:
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                    raise os_error(exc, self.output, f"write it (in {self.output.parent or '.'})") from None
                raise os_error(exc, self.output, f"create its lock file {self.path.name}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder_pid(fd)
                os.close(fd)
                raise UserError(f"{self.output}: being written by another process"
                                f"{f' (pid {holder})' if holder else ''}; wait for it to finish or choose another "
                                "output") from None
            except OSError as exc:
                os.close(fd)
                raise os_error(exc, self.path, "lock") from None
            try:  # the holder before us may have removed the file between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return
        raise UserError(f"{self.output}: could not lock it (lock file {self.path} keeps changing)")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding the lock: a waiter re-checks the inode
        os.close(self.fd)
        self.fd = None


def _holder_pid(fd: int, wait_s: float = 1.0) -> Optional[int]:
    """The pid in a held lock file. The holder writes it right after taking the lock, so a writer
    refused in between waits briefly (at most ``wait_s``) for it rather than naming no one."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        pid = _read_pid(fd)
        if pid is not None or time.monotonic() >= deadline:
            return pid
        time.sleep(0.005)


def _read_pid(fd: int) -> Optional[int]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


# --------------------------------------------------------------------------- outputs
class Output:
    """A prepared output (see :func:`prepare_output`): ``path`` (as named), ``kind`` ('dir' or
    'file'), ``existed`` (it was there before: overwrite or resume). Use as a context manager, or
    call :meth:`close` when done."""

    def __init__(self, path: Path, kind: str, existed: bool, lock: _Lock, created: list[Path],
                 also: Iterable[Path] = ()):
        self.path, self.kind, self.existed = path, kind, existed
        self._lock, self._created = lock, created
        self._before = _identity(path)
        self._new_also = [p for p in also if not os.path.lexists(p)]

    def written(self) -> bool:
        """Whether the output itself was written (created or replaced) since it was prepared."""
        now = _identity(self.path)
        return now is not None and now != self._before

    def discard_partial(self) -> None:
        """After a failure, remove what this run created that no checkpoint backs: beside a file
        output that was never written, the files listed in ``also`` that this run created (logs of
        a run without its checkpoint); a directory output this run created that holds no
        checkpoint (``*.safetensors``) yet, with everything in it (nothing else wrote there: it
        was locked). A directory holding a checkpoint is kept (``--resume`` continues from it)."""
        if self.kind == "file" and not self.written():
            for p in self._new_also:
                with contextlib.suppress(OSError):
                    if os.path.isfile(p) and not os.path.islink(p):
                        os.unlink(p)
        elif self.kind == "dir" and not self.existed:
            with contextlib.suppress(OSError):
                if os.path.isdir(self.path) and not os.path.islink(self.path) \
                        and not any(self.path.rglob("*.safetensors")):
                    import shutil

                    shutil.rmtree(self.path)

    def file(self, name: str | Path) -> Path:
        """A path inside a directory output (``name`` relative), or ``name`` itself when absolute."""
        p = Path(name)
        return p if p.is_absolute() or self.kind == "file" else self.path / p

    def ensure_dir(self) -> Path:
        """Create a directory output (and its parents) now; returns it."""
        target = self.path if self.kind == "dir" else self.path.parent
        _make_dirs(target, self._created)
        return target

    @contextlib.contextmanager
    def atomic(self, name: str | Path) -> Iterator[Path]:
        """A temporary path renamed onto ``file(name)`` when the block succeeds."""
        self.ensure_dir()
        with atomic_path(self.file(name)) as tmp:
            yield tmp

    def write_text(self, name: str | Path, text: str) -> Path:
        self.ensure_dir()
        return atomic_write_text(self.file(name), text)

    def write_bytes(self, name: str | Path, data: bytes) -> Path:
        self.ensure_dir()
        return atomic_write_bytes(self.file(name), data)

    def close(self) -> None:
        """Release the lock; remove directories this output created that are still empty."""
        for d in reversed(self._created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only succeeds when empty: never removes anything written
        self._created = []
        self._lock.release()

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard_partial()
        self.close()
        if isinstance(exc, OSError) and not isinstance(exc, UserError):
            raise os_error(exc, exc.filename or self.path, "write") from None


def _identity(p: Path) -> Optional[tuple[int, int, int]]:
    try:
        st = os.lstat(p)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _make_dirs(d: Path, created: list[Path]) -> None:
    missing = []
    p = d
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for m in reversed(missing):
        try:
            os.mkdir(m, public_mode(directory=True) | 0o700)
        except FileExistsError:
            continue
        except OSError as exc:
            raise os_error(exc, m, "create directory") from None
        created.append(m)
    if not os.path.isdir(d):
        raise UserError(f"{d}: cannot create directory (a file is in the way)")


def _forbidden(p: Path, what: str) -> None:
    if str(p) in ("", "."):
        raise UserError(f"{what}: an empty path or '.' names no new output; give a file or directory name")
    try:
        resolved = p.resolve()
        cwd = Path.cwd().resolve()
    except (OSError, RuntimeError) as exc:
        raise UserError(f"{p}: cannot resolve the path ({exc})") from None
    if resolved == Path(resolved.anchor) or resolved == cwd or resolved in cwd.parents:
        raise UserError(f"{p}: is the current directory, one above it or the root; refusing to write into it "
                        "(give a new directory name)")


def _check_existing(p: Path, kind: str, overwrite: bool, resume: bool, what: str) -> bool:
    """Whether ``p`` exists (and may be written over); refusals raise."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise UserError(f"{p}: cannot write it (a parent of it is a file, not a directory)") from None
    except OSError as exc:
        raise os_error(exc, p, "inspect") from None
    from smiling_ros.io.inputs import describe_mode

    if stat.S_ISLNK(st.st_mode):
        raise UserError(f"{p}: is a symbolic link; refusing to write through it (name the real path)")
    if kind == "dir":
        if not stat.S_ISDIR(st.st_mode):
            kind_text = "a file" if stat.S_ISREG(st.st_mode) else describe_mode(st.st_mode)
            raise UserError(f"{p}: exists and is {kind_text}, not a directory ({what} names a directory)")
        try:
            empty = not any(os.scandir(p))
        except OSError as exc:
            raise os_error(exc, p, "list") from None
        if not empty and not (overwrite or resume):
            raise UserError(f"{p}: already exists and is not empty; refusing to write into it (pass --overwrite to replace "
                            "files of the same names, others are kept; or choose another output)")
        return True
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{p}: is a directory ({what} names a file)")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{p}: exists and is {describe_mode(st.st_mode)}; refusing to write over it")
    if not overwrite:
        raise UserError(f"{p}: already exists; refusing to replace it (pass --overwrite to replace it, or choose "
                        "another output)")
    return True


def prepare_output(path: str | Path, kind: str = "file", overwrite: bool = False, *, also: Iterable[str | Path] = (),
                   resume: bool = False, what: str = "--out") -> Output:
    """Check, lock and (lazily) create an output; see the module docstring.

    path: the output as the user named it (taken literally). kind: ``'file'`` or ``'dir'``.
    overwrite: the user passed ``--overwrite``. also: other files the command will write (beside a
    file output, or anywhere), checked the same way. resume: an existing directory output is the
    run being continued. what: how the user named it, for messages (``--out``, ``--policy-out``).
    Returns an :class:`Output` holding the lock (use ``with``).
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    if path is None or str(path).strip() == "":
        raise UserError(f"{what}: empty path; give a file or directory name")
    p = Path(path)
    _forbidden(p, what)
    existed = _check_existing(p, kind, overwrite, resume, what)
    for extra in also:
        _check_existing(Path(extra), "file", overwrite, resume, what)
    created: list[Path] = []
    _make_dirs(p.parent if str(p.parent) else Path("."), created)
    lock = _Lock(p)
    try:
        lock.acquire()
        # checked again under the lock: another writer may have finished meanwhile
        existed = _check_existing(p, kind, overwrite, resume, what)
        for extra in also:
            _check_existing(Path(extra), "file", overwrite, resume, what)
    except BaseException:
        lock.release()
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return Output(p, kind, existed, lock, created, [Path(a) for a in also])


def require_name(path, what: str = "--out") -> Path:
    """``path`` as a Path, refusing an empty name and names that end in '.' or '..' (they name no new
    output). For names that are derived from before :func:`prepare_output` sees them."""
    if path is None or str(path).strip() == "" or Path(str(path)).name in ("", ".", ".."):
        raise UserError(f"{what}: {str(path)!r} names no new output; give a file or directory name")
    return Path(path)


def add_overwrite_argument(parser) -> None:
    """The ``--overwrite`` flag, the same on every verb that writes."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs of the same names (otherwise an existing output is refused)")
