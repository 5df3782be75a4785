"""Crash safety of recorder_node: SIGKILL mid-recording keeps everything up to the last flush.

One realtime sim_node (scripted expert, /clock) feeds three recorder_node processes at once over
real DDS: MCAP flushed every 0.5 s, sqlite3 flushed every 0.5 s, and MCAP with periodic flushing
off (``flush_period_s:=0``, the control: rosbags keeps up to 1 MiB of chunk in memory). All three
are killed with SIGKILL after a few episodes. The killed recordings have no metadata.yaml (and the
MCAPs no footer); `smiling-ros import-bag` reads them (``--salvage`` for MCAP) and must return
every episode whose end marker the recorder had printed at least one flush period (plus margin)
before the kill, each with all its steps.
"""
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from conftest import requires_ros

pytestmark = [requires_ros, pytest.mark.slow]

STEPS = 10  # env steps per episode (11 observations)
FLUSH_S = 0.5
MARGIN_S = 0.6  # DDS delivery + the stamper's wait for the next /clock + the 50 ms poll period

CFG = {
    "task": {"env": "smiling_ros/ArmReach-v0", "max_episode_steps": STEPS},
    "rate_hz": 20.0,
    "seed": 3,
    "topics": {"episode": "/crash/episode"},
    "observation": [{"topic": "/observation", "type": "std_msgs/msg/Float64MultiArray", "field": "data"}],
    "action": [{"topic": "/forward_command_controller/commands", "type": "std_msgs/msg/Float64MultiArray",
                "field": "data"}],
    "import": {"gap_s": 0.5, "min_episode_steps": 2},
}


class Proc:
    """A node module as a child process; stdout lines with their arrival time (monotonic)."""

    def __init__(self, module, params, env, log):
        cmd = [sys.executable, "-m", f"smiling_ros.nodes.{module}", "--ros-args"]
        for k, v in params.items():
            v = str(v).lower() if isinstance(v, bool) else json.dumps(v) if isinstance(v, str) else v
            cmd += ["-p", f"{k}:={v}"]
        self.log = log
        self._err = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=self._err, text=True)
        self.lines: list[tuple[float, str]] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def markers(self, before=float("inf")):
        return [json.loads(ln[8:]) for t, ln in list(self.lines) if ln.startswith("EPISODE ") and t <= before]

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._t.join(2)
        self._err.close()
        return self.proc.returncode


def cli(*args, env):
    return subprocess.run([sys.executable, "-m", "smiling_ros.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_sigkill_keeps_everything_up_to_the_last_flush(tmp_path, ros_env):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    runs = {"mcap": ("mcap", FLUSH_S), "sqlite3": ("sqlite3", FLUSH_S), "noflush": ("mcap", 0.0)}
    recs = {name: Proc("recorder_node", {"config": str(cfg), "output": str(tmp_path / name), "storage": storage,
                                         "flush_period_s": period, "use_sim_time": True}, ros_env,
                       tmp_path / f"rec_{name}.log")
            for name, (storage, period) in runs.items()}
    sim = Proc("sim_node", {"config": str(cfg), "expert": "scripted", "time_scale": 2.0, "publish_clock": True,
                            "wait_for_subscribers": len(recs)}, ros_env, tmp_path / "sim.log")
    try:
        # Record until every recorder has seen 3 episodes end, then wait out one flush period and kill.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
                sum(m["event"] == "end" for m in r.markers()) >= 3 for r in recs.values()):
            assert sim.proc.poll() is None, sim.log.read_text()[-2000:]
            time.sleep(0.05)
        time.sleep(FLUSH_S + MARGIN_S + 0.2)
        t_kill = time.monotonic()
        for r in recs.values():
            assert r.kill(signal.SIGKILL) == -signal.SIGKILL, r.log.read_text()[-2000:]
    finally:
        sim.kill(signal.SIGINT)
        for r in recs.values():
            r.kill()

    for name, r in recs.items():
        bag = tmp_path / name
        assert not (bag / "metadata.yaml").exists()  # killed: never closed
        assert not any(ln.startswith("RECORDED ") for _, ln in r.lines)
        # Episodes whose end marker was written at least one flush period (+ margin) before the kill.
        safe = [m["episode"] for m in r.markers(before=t_kill - FLUSH_S - MARGIN_S) if m["event"] == "end"]
        assert len(safe) >= 3 or name == "noflush", r.markers()

        out = tmp_path / f"ds_{name}"
        if name == "sqlite3":  # a .db3 without metadata.yaml opens as it is: committed rows are all there
            res = cli("import-bag", bag, "--config", cfg, "--out", out, "--no-progress", env=ros_env)
        elif name == "mcap":  # no footer: the plain reader refuses it and points to --salvage
            plain = cli("import-bag", bag, "--config", cfg, "--out", out, "--no-progress", env=ros_env)
            assert plain.returncode == 2 and "--salvage" in plain.stderr and "Traceback" not in plain.stderr
            assert len(plain.stderr.strip().splitlines()) == 1 and not out.exists()
            res = cli("import-bag", bag, "--config", cfg, "--out", out, "--salvage", "--no-progress", env=ros_env)
        else:
            res = cli("import-bag", bag, "--config", cfg, "--out", out, "--salvage", "--no-progress", env=ros_env)

        if name == "noflush":
            # The control: without periodic flushes the whole recording was still in memory.
            assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
            continue
        assert res.returncode == 0, res.stderr
        meta = json.loads((out / "meta.json").read_text())
        assert meta["episodes_from"] == "markers"
        got = {e["marker_episode"]: n for e, n in zip(meta["episodes"], meta["episode_lengths"])}
        for ep in safe:
            # complete: the import grid has one row per control period of the episode (STEPS), as for a
            # bag that was closed normally (test_sim_recorder); a lost tail would shorten or drop it
            assert got.get(ep) == STEPS, (name, ep, got)


def test_recorder_bad_parameters_and_config_are_one_line(tmp_path, ros_env):
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text(yaml.safe_dump({**CFG, "record": {"storage": "mcap", "flush_s": 1}}))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    cases = {
        "flush": ({"config": str(cfg), "flush_period_s": -1.0}, "parameter 'flush_period_s': must be >= 0"),
        "flush_type": ({"config": str(cfg), "flush_period_s": "often"}, "parameter 'flush_period_s': expected float"),
        "depth": ({"config": str(cfg), "depth": 0}, "parameter 'depth': must be >= 1"),
        "config": ({"config": str(bad_cfg)}, f"{bad_cfg}: record: unknown key 'flush_s'"),
    }
    procs = {name: Proc("recorder_node", {**params, "output": str(tmp_path / f"bag_{name}")}, ros_env,
                        tmp_path / f"{name}.log") for name, (params, _) in cases.items()}
    for name, p in procs.items():
        try:
            assert p.proc.wait(30) == 2
        finally:
            p.kill()
        err = p.log.read_text().strip().splitlines()
        assert len(err) == 1 and "Traceback" not in p.log.read_text(), err
        assert err[0].startswith("recorder_node: error: ") and cases[name][1] in err[0], err
        assert not (tmp_path / f"bag_{name}").exists()  # no bag started
