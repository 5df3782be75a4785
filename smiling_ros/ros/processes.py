"""Child processes the CLI starts (nodes run as real processes, never threads): start with
``--ros-args -p`` parameters, read stdout line by line, log stderr, stop politely."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional


def ros_arg(name: str, value: Any) -> list[str]:
    """``-p name:=value`` with value as YAML (strings quoted so '123' stays a string)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value)
    else:
        text = repr(value)
    return ["-p", f"{name}:={text}"]


class Child:
    """A node run as a child process; stdout is read line by line by a thread, stderr goes to a log."""

    def __init__(self, name: str, module: str, params: dict[str, Any], env: dict[str, str], log_dir: Path,
                 on_line=None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")
        cmd = [sys.executable, "-m", module, "--ros-args"]
        for k, v in params.items():
            cmd += ros_arg(k, v)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1)
        self.lines: list[str] = []
        self._on_line = on_line
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self._on_line is not None:
                self._on_line(line)

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGINT (nodes close cleanly), then SIGTERM, then SIGKILL."""
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self._reader.join(timeout=2.0)
        self._log.close()
        return self.proc.poll()

    def last_error(self) -> str:
        """The child's last meaningful stderr line (its one-line error, or a traceback's last line)."""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text().splitlines() if ln.strip()]
        except OSError:
            return ""
        for ln in reversed(lines):
            if "error" in ln.lower() or "exception" in ln.lower():
                return ln
        return lines[-1] if lines else ""


