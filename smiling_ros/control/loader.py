"""Background loading of announced checkpoints (the newest request wins)."""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from smiling_ros.control.realtime import background_priority  # noqa
from smiling_ros.errors import UserError


# --------------------------------------------------------------------------- background loading
class PolicyLoader:
    """Loads announced checkpoints on a background thread; the newest request wins.

    ``load(path) -> policy`` may raise :class:`UserError` (reported through ``on_error``);
    ``on_loaded(policy, path)`` receives each loaded policy.
    """

    def __init__(self, load: Callable[[str], Any], on_loaded: Callable[[Any, str], None],
                 on_error: Callable[[str, str], None]):
        self._load, self._on_loaded, self._on_error = load, on_loaded, on_error
        self._cv = threading.Condition()
        self._pending: Optional[str] = None
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="policy-loader", daemon=True)
        self._thread.start()

    def request(self, path: str) -> None:
        with self._cv:
            self._pending = path
            self._cv.notify()

    def idle(self) -> bool:
        with self._cv:
            return self._pending is None and not self._busy

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
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
                self._busy = True
            try:
                policy = self._load(path)
            except UserError as exc:
                self._on_error(path, str(exc))
            except Exception as exc:  # noqa: BLE001 - a bad file must not kill the loader
                self._on_error(path, f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            else:
                self._on_loaded(policy, path)
            finally:
                with self._cv:
                    self._busy = False
