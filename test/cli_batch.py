"""Run many `smiling-ros` command lines in one child process, each with its own time limit.

A child Python process (a fresh interpreter, like the console script) imports the console
script's entry point ``smiling_ros.cli:main`` once and runs each case in turn: its stdout/stderr
are captured, an exception escaping ``main`` is recorded with its traceback, and a case that runs
past ``case_timeout_s`` is interrupted by SIGALRM (a blocked ``open`` of a FIFO included) and
recorded as a hang. The whole child also runs under a wall-clock limit. Starting the interpreter
and importing torch costs about a second, so batching keeps a corpus of hundreds of cases fast.

Also: :func:`snapshot` (every path under a directory with its kind and content hash, FIFOs and
devices never opened) and :func:`check_refusal` (the invariants of a refused bad input).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

REPO = Path(__file__).resolve().parent.parent


def snapshot(root: Path) -> dict[str, Any]:
    """Path -> (kind, content hash or link target), for everything under ``root``."""
    out: dict[str, Any] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("special", stat.S_IFMT(st.st_mode))
    return out


def run_batch(cases: list[dict[str, Any]], cwd: Path, case_timeout_s: float = 60.0, total_timeout_s: float = 900.0,
              env: Optional[dict[str, str]] = None, fsize_limit: Optional[int] = None) -> list[dict[str, Any]]:
    """Run ``cases`` (each ``{"argv": [...], ...}``) in one child; returns one result per case:
    ``rc``, ``out``, ``err``, ``traceback`` (str or None), ``hang`` (bool), ``seconds``, plus the
    child's peak memory ``maxrss_kb`` on every result. ``fsize_limit``: RLIMIT_FSIZE for the child
    in bytes (writes beyond it fail with EFBIG, as on a full disk)."""
    with tempfile.TemporaryDirectory(prefix="cli_batch.") as tmp:
        spec, result = Path(tmp) / "cases.json", Path(tmp) / "results.json"
        spec.write_text(json.dumps({"cases": cases, "timeout": case_timeout_s, "fsize": fsize_limit}))
        child_env = dict(os.environ if env is None else env)
        child_env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "test")] +
                                                  [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p])
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(spec), str(result)], cwd=cwd,
                              env=child_env, timeout=total_timeout_s, capture_output=True, text=True)
        if proc.returncode != 0 or not result.exists():
            raise AssertionError(f"batch child failed (status {proc.returncode}): {proc.stderr[-3000:]}")
        return json.loads(result.read_text())


def check_refusal(res: dict[str, Any], names: Iterable[str] = (), words: Iterable[str] = (),
                  before: Optional[dict] = None, after: Optional[dict] = None, what: str = "") -> None:
    """A refused bad input: not a hang, no traceback, non-zero status, exactly one stderr line
    starting ``smiling-ros VERB: error:`` that names one of ``names`` and holds every one of
    ``words`` ('a|b': either), and the directory snapshot unchanged."""
    tag = f"{what} {res.get('argv')}"
    assert not res["hang"], f"hang: {tag}"
    assert res["traceback"] is None, f"traceback: {tag}\n{res['traceback']}"
    assert "Traceback" not in res["err"] + res["out"], f"{tag}: {res['err']}"
    assert res["rc"] not in (0, None), f"exit status {res['rc']}: {tag}\n{res['err']}"
    # progress bars of work done before an error (tqdm, on stderr) are not error lines
    lines = [ln for ln in res["err"].splitlines() if ln.strip() and not re.search(r"\d+%\|", ln)]
    assert len(lines) == 1, f"{len(lines)} stderr lines: {tag}\n{res['err']}"
    verb = res["argv"][0]
    assert lines[0].startswith(f"smiling-ros {verb}: error: "), f"{tag}: {lines[0]}"
    names = [str(n) for n in names]
    if names:
        assert any(n in lines[0] for n in names), f"{tag}: names none of {names}: {lines[0]}"
    for w in words:
        assert any(alt in lines[0] for alt in w.split("|")), f"{tag}: '{w}' not in: {lines[0]}"
    if before is not None:
        assert after == before, f"{tag}: files changed: {diff(before, after)}"


def diff(before: dict, after: dict) -> str:
    keys = sorted(set(before) | set(after))
    return ", ".join(f"{k}: {before.get(k)} -> {after.get(k)}" for k in keys if before.get(k) != after.get(k))[:2000]


# --------------------------------------------------------------------------- the child
class _Hang(BaseException):
    pass


def _child(spec_path: str, result_path: str) -> None:
    import contextlib
    import io
    import resource
    import signal
    import time
    import traceback

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("fsize"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    from smiling_ros.cli import main  # the console script's entry point

    def on_alarm(signum, frame):
        raise _Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    results = []
    for case in spec["cases"]:
        out, err = io.StringIO(), io.StringIO()
        res: dict[str, Any] = dict(case, rc=None, traceback=None, hang=False)
        cwd = os.getcwd()
        if case.get("cwd"):
            os.chdir(case["cwd"])
        if spec.get("fsize"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize"], resource.RLIM_INFINITY))
        t0 = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, float(case.get("timeout", spec["timeout"])))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    res["rc"] = main(list(case["argv"]))
                except SystemExit as exc:
                    res["rc"] = exc.code if isinstance(exc.code, int) else 1
        except _Hang:
            res["hang"] = True
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            res["traceback"] = traceback.format_exc()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if spec.get("fsize"):
                resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            os.chdir(cwd)
        res.update(out=out.getvalue(), err=err.getvalue(), seconds=time.monotonic() - t0)
        results.append(res)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for r in results:
        r["maxrss_kb"] = peak
    Path(result_path).write_text(json.dumps(results))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
