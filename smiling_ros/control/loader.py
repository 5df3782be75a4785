"""Background loading of announced checkpoints (the newest request wins)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from smiling_ros.control.realtime import background_priority  # noqa
from smiling_ros.errors import UserError

MAX_STUCK_LOADS = 8  # loads abandoned while still running (e.g. a file system that never answers)


# --------------------------------------------------------------------------- background loading
class PolicyLoader:
    """Loads announced checkpoints in the background; the newest request wins.

    ``load(path) -> policy`` may raise :class:`UserError` (reported through ``on_error``);
    ``on_loaded(policy, path)`` receives each loaded policy; ``load`` may return ``(policy, path)``
    to name the file it loaded, or None (nothing to swap, e.g. the checkpoint already running).
    Requests are paths or :class:`Announced` / :class:`Transferred` items (see
    :func:`checkpoint_for_swap`).

    Each load runs in its own worker thread. When a newer announcement arrives while one runs, the
    running load gets ``stuck_after_s`` more seconds to finish; after that it is abandoned (its
    result, if it ever comes, is discarded and reported as superseded) and the newer one starts, so
    no single announcement (a file that blocks on reading, a file system that never answers) can
    stop later ones from loading. At most ``MAX_STUCK_LOADS`` abandoned loads may still be running;
    beyond that, requests are refused through ``on_error``.
    """

    def __init__(self, load: Callable[[str], Any], on_loaded: Callable[[Any, str], None],
                 on_error: Callable[[str, str], None], stuck_after_s: float = 10.0):
        self._load, self._on_loaded, self._on_error = load, on_loaded, on_error
        self.stuck_after_s = float(stuck_after_s)
        self._cv = threading.Condition()
        self._pending: Optional[str] = None
        self._busy = False
        self._closed = False
        self._generation = 0  # id of the load whose result counts
        self._abandoned: set[threading.Thread] = set()
        self._thread = threading.Thread(target=self._run, name="policy-loader", daemon=True)
        self._thread.start()

    def request(self, path: Any) -> None:
        with self._cv:
            self._pending = path
            self._cv.notify_all()

    def idle(self) -> bool:
        with self._cv:
            return self._pending is None and not self._busy

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        background_priority()
        while True:
            with self._cv:
                while self._pending is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                path, self._pending = self._pending, None
                if path is None:  # woken by close()
                    continue
                self._abandoned = {t for t in self._abandoned if t.is_alive()}
                if len(self._abandoned) >= MAX_STUCK_LOADS:
                    refuse = True
                else:
                    refuse = False
                    self._busy = True
                    self._generation += 1
                    gen = self._generation
                    done = threading.Event()
                    worker = threading.Thread(target=self._work, args=(path, gen, done), name="policy-load",
                                              daemon=True)
            if refuse:
                self._on_error(path, f"{path}: not loaded: {MAX_STUCK_LOADS} earlier loads never finished "
                                     "(a checkpoint path that blocks on reading?)")
                continue
            worker.start()
            with self._cv:
                # wait for this load; once a newer request is waiting, for stuck_after_s more at most
                newer_since: Optional[float] = None
                while not done.is_set() and not self._closed:
                    if self._pending is not None:
                        now = time.monotonic()
                        newer_since = now if newer_since is None else newer_since
                        if now - newer_since >= self.stuck_after_s:
                            break
                        self._cv.wait(self.stuck_after_s - (now - newer_since))
                    else:
                        self._cv.wait()
                if not done.is_set():
                    self._generation += 1  # its result no longer counts
                    self._abandoned.add(worker)
                self._busy = False

    def _work(self, path: str, gen: int, done: threading.Event) -> None:
        result: Any = None
        error: Optional[str] = None
        try:
            result = self._load(path)
        except UserError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bad file must not kill the loader
            error = f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        with self._cv:
            current = gen == self._generation and not self._closed
        label = str(path)
        if isinstance(result, tuple):  # (policy, the file it came from)
            result, label = result
        try:
            if not current:
                self._on_error(str(path), f"{path}: load superseded by a newer announcement before it finished")
            elif error is not None:
                self._on_error(str(path), error)
            elif result is not None:
                self._on_loaded(result, label)
        except Exception:  # noqa: BLE001 - a failing callback must not stop the loader
            pass
        finally:
            with self._cv:
                done.set()
                self._cv.notify_all()


# --------------------------------------------------------------------------- what a swap loads
@dataclass
class Announced:
    """A checkpoint announced by path (shared disk), with its hash when the announcement had one."""

    path: str
    sha256: Optional[str] = None

    def __str__(self) -> str:
        return self.path


@dataclass
class Transferred:
    """A checkpoint received over ROS (bytes as received, unverified)."""

    data: Any
    source: str

    def __str__(self) -> str:
        return f"checkpoint transfer on {self.source}"


def checkpoint_for_swap(item: Any, max_bytes: int, cache: str = "") -> tuple[str, Optional[str]]:
    """A verified local checkpoint file for a swap request, and its SHA-256 (None for a bare path).

    A transfer is checked (size limit, SHA-256) and stored in the cache directory before anything
    reads it as a checkpoint; an announced file is checked against its announced hash. Raises
    :class:`UserError` (one line) when refused."""
    from smiling_ros.learn import transfer

    if isinstance(item, Transferred):
        header, data = transfer.decode(item.data, max_bytes, str(item))
        return str(transfer.store(header, data, transfer.cache_dir(cache))), header.sha256
    if isinstance(item, Announced):
        transfer.verify_file(item.path, item.sha256, max_bytes)
        return item.path, item.sha256
    return str(item), None
