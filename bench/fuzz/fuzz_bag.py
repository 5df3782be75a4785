"""Fuzz the bag reader / import path on mutated MCAP and sqlite3 bytes.

Every input is a valid small recording (MCAP or sqlite3, with episode markers) mutated by a few
byte-level edits (flips, overwrites, deletions, insertions, duplications, truncation), written to
a bare .mcap/.db3 file (or, for the hypothesis engine, a bag directory whose metadata.yaml is the
mutated part) and imported with :func:`smiling_ros.io.importer.import_bag`. An input may
import (the damage missed everything that matters) or fail with :class:`UserError` (one line);
anything else is a crash (a bug). Crashing inputs are saved under OUT/crashes/.

Engines: ``hypothesis`` (random structured mutations, time-bounded) and ``atheris``
(coverage-guided libFuzzer, when the ``atheris`` package is importable).

Usage: python bench/fuzz/fuzz_bag.py [--seconds 60] [--engine hypothesis|atheris] [--out bench/fuzz/out]
Prints the figures and writes OUT/results_<engine>.json.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "test"))


class Harness:
    """Runs one input through the import path and keeps the tallies."""

    def __init__(self, out: Path):
        from badbags import demo_bag, storage_file, write_config

        from smiling_ros.config import load_config

        self.out = out
        self.work = Path(tempfile.mkdtemp(prefix="fuzzbag."))
        self.seeds: dict[str, bytes] = {}
        for storage, suffix in (("mcap", ".mcap"), ("sqlite3", ".db3")):
            info = demo_bag(self.work / f"seed_{storage}", storage, episodes=2, seconds=0.3, pause_s=0.6, markers=True,
                            success=[True, False])
            self.seeds[suffix] = storage_file(info["path"]).read_bytes()
            if storage == "mcap":  # a directory bag: its metadata.yaml is mutated, the .mcap kept
                self.seeds["/metadata.yaml"] = (info["path"] / "metadata.yaml").read_bytes()
                self.dir_storage = storage_file(info["path"]).read_bytes()
        self.cfg = load_config(write_config(self.work / "cfg.yaml", min_steps=1))
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.crashes: dict[str, str] = {}
        self.slowest = 0.0

    def run_one(self, data: bytes, suffix: str) -> None:
        from smiling_ros.errors import UserError
        from smiling_ros.io.importer import import_bag

        if suffix == "/metadata.yaml":
            path = self.work / "dirbag"
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            (path / "seed_mcap.mcap").write_bytes(self.dir_storage)
            (path / "metadata.yaml").write_bytes(data)
        else:
            path = self.work / f"input{suffix}"
            path.write_bytes(data)
        dst = self.work / "ds"
        t = time.perf_counter()
        try:
            import_bag(path, self.cfg, dst, progress=False, log=lambda s: None)
            self.counts["imported"] += 1
        except UserError as exc:
            self.counts["user_error"] += 1
            self.errors[_error_kind(str(exc))] += 1
            if "\n" in str(exc):
                self._crash(data, suffix, "UserError with several lines")
        except BaseException as exc:  # noqa: BLE001 - this is what the fuzzer looks for
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.counts["crash"] += 1
            self._crash(data, suffix, "".join(traceback.format_exception_only(type(exc), exc)).strip())
        finally:
            took = time.perf_counter() - t
            if took > self.slowest:
                self.slowest = took
                self.slowest_input = (data, suffix)
            shutil.rmtree(dst, ignore_errors=True)
            for p in self.work.glob(".ds.*"):
                shutil.rmtree(p, ignore_errors=True)
            if any(p.name.startswith(".ds.") for p in self.work.iterdir()):
                self.counts["leftover_temp"] += 1

    def _crash(self, data: bytes, suffix: str, what: str) -> None:
        key = hashlib.sha1(data).hexdigest()[:12]
        name = key + suffix.replace("/", "_")
        self.crashes[name] = what
        d = self.out / "crashes"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _error_kind(msg: str) -> str:
    """Bucket a UserError by its reason (the text after the path)."""
    for key in ("truncated or corrupt MCAP", "corrupt MCAP", "corrupt sqlite3", "cannot decode", "bag is empty",
                "not in bag", "dimension changed", "episode marker", "no complete episode", "is NaN", "is inf",
                "|x| >", "unknown", "not JSON", "empty file", "no complete observation", "has type"):
        if key in msg:
            return key
    return msg.split(": ", 1)[-1][:60]


def mutate(seed: bytes, ops: list[tuple[int, int, int, bytes]]) -> bytes:
    """Apply byte edits: (kind, position, length, payload) with kind 0 flip, 1 overwrite,
    2 delete, 3 insert, 4 duplicate, 5 truncate."""
    data = bytearray(seed)
    for kind, pos, length, payload in ops:
        if not data:
            break
        pos %= len(data)
        if kind == 0:
            data[pos] ^= (payload[0] if payload else 0xFF) or 1
        elif kind == 1:
            data[pos:pos + len(payload)] = payload
        elif kind == 2:
            del data[pos:pos + length]
        elif kind == 3:
            data[pos:pos] = payload
        elif kind == 4:
            data[pos:pos] = data[pos:pos + length]
        else:
            del data[pos:]
    return bytes(data)


def run_hypothesis(h: Harness, seconds: float) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    op = st.tuples(
        st.sampled_from([0, 0, 0, 1, 1, 2, 3, 4, 5]),
        st.integers(0, 1 << 20),
        st.integers(1, 256),
        st.binary(min_size=1, max_size=32),
    )
    deadline = time.monotonic() + seconds

    @settings(max_examples=200, deadline=None, phases=[Phase.generate], database=None,
              suppress_health_check=list(HealthCheck))
    @given(suffix=st.sampled_from([".mcap", ".mcap", ".db3", ".db3", "/metadata.yaml"]),
           ops=st.lists(op, min_size=1, max_size=6))
    def target(suffix, ops):
        if time.monotonic() > deadline:
            return
        h.counts["inputs"] += 1
        h.run_one(mutate(h.seeds[suffix], ops), suffix)

    while time.monotonic() < deadline:
        target()


def run_atheris(out: Path, seconds: float) -> None:
    """Instrument the reader path (not torch: only modules loaded before ``instrument_all``),
    then fuzz for ``seconds``."""
    import atheris

    t0 = time.perf_counter()
    # coverage feedback from the bag reader path: rosbags and smiling_ros (not numpy/torch)
    with atheris.instrument_imports(include=["rosbags", "smiling_ros"]):
        import rosbags.rosbag2.storage_mcap  # noqa: F401
        import rosbags.rosbag2.storage_sqlite3  # noqa: F401
        import rosbags.serde  # noqa: F401
        import rosbags.typesys  # noqa: F401
        import rosbags.typesys.stores.ros2_jazzy  # noqa: F401

        import smiling_ros.io.bag  # noqa: F401
        import smiling_ros.io.fields  # noqa: F401
        import smiling_ros.io.importer  # noqa: F401
    print(f"instrumented in {time.perf_counter() - t0:.1f} s", flush=True)
    h = Harness(out)
    corpus = h.work / "corpus"
    corpus.mkdir()
    for suffix, data in h.seeds.items():  # first byte picks the storage, the rest is the file
        if suffix.startswith("/"):
            continue
        (corpus / f"seed{suffix}").write_bytes((b"m" if suffix == ".mcap" else b"s") + data)

    deadline = time.monotonic() + seconds
    start = time.perf_counter()

    def target(buf: bytes) -> None:
        if time.monotonic() > deadline:  # libFuzzer ends with os._exit: report from here
            report(h, "atheris", time.perf_counter() - start, out)
            h.close()
            os._exit(0)
        if not buf:
            return
        h.counts["inputs"] += 1
        h.run_one(buf[1:], ".mcap" if buf[0] % 2 else ".db3")

    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds) + 60}", "-rss_limit_mb=4096", "-timeout=30",
                   "-max_len=65536", "-print_final_stats=0", str(corpus)], target)
    atheris.Fuzz()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--engine", choices=["hypothesis", "atheris"], default="hypothesis")
    p.add_argument("--out", default=str(REPO / "bench/fuzz/out"))
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.engine == "atheris":
        run_atheris(out, a.seconds)
        return
    h = Harness(out)
    t = time.perf_counter()
    try:
        run_hypothesis(h, a.seconds)
        report(h, a.engine, time.perf_counter() - t, out)
    finally:
        h.close()


_reported = False


def report(h: Harness, engine: str, elapsed: float, out: Path) -> None:
    global _reported
    if _reported:
        return
    _reported = True
    res = {
        "engine": engine,
        "seconds": round(elapsed, 1),
        "inputs": h.counts["inputs"],
        "imported": h.counts["imported"],
        "user_errors": h.counts["user_error"],
        "crashes": h.counts["crash"],
        "leftover_temp_dirs": h.counts["leftover_temp"],
        "slowest_input_s": round(h.slowest, 3),
        "inputs_per_s": round(h.counts["inputs"] / max(elapsed, 1e-9), 1),
        "error_kinds": dict(h.errors.most_common()),
        "crash_samples": h.crashes,
        "cpus": os.cpu_count(),
    }
    (out / f"results_{engine}.json").write_text(json.dumps(res, indent=1))
    if getattr(h, "slowest_input", None):  # kept for a look: python -c "import_bag(...)" on it
        data, suffix = h.slowest_input
        (out / f"slowest_{engine}{suffix.replace('/', '_')}").write_bytes(data)
    print(
        f"fuzz ({engine}, {res['seconds']} s): {res['inputs']} inputs, {res['imported']} imported, "
        f"{res['user_errors']} UserError, {res['crashes']} crashes, slowest input {res['slowest_input_s']} s"
    )
    for k, v in h.errors.most_common(8):
        print(f"  {v:6d}  {k}")
    for k, v in list(h.crashes.items())[:10]:
        print(f"  CRASH {k}: {v}")
    print(f"wrote {out / f'results_{engine}.json'}", flush=True)


if __name__ == "__main__":
    main()
