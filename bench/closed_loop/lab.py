"""controller_node on an independent multi-rate arm (test/lab_arm.py: 500 Hz joint states with
header stamps, a 10 Hz target, velocity commands), with the README's example config.

    python bench/closed_loop/lab.py                     # 100 and 250 Hz, 5 rounds of faults
    python bench/closed_loop/lab.py --rates 100 --rounds 2 --normal 5

Per control rate, one run of the arm's phase schedule: a normal window of --normal seconds, then
--rounds rounds of faults (joint states stop, NaN elbow position, elbow joint missing, frozen
joint-state stamps, target stops), each followed by a normal phase. From the commands the arm
received (its clock):

- normal window: commands/s, all-zero (stop) commands, longest gap between two commands;
- per fault: control periods from the fault to the stop command the arm received ("stop"), for
  stale inputs counted from the moment the input became older than its maximum age (the last
  good sample + max age), and from the first good sample after the fault to the first command
  again ("resume"). Medians and maxima over the rounds.

Writes bench/closed_loop/results_lab.json and prints a table. The policy commands a constant
0.2 rad/s (timing does not depend on what it computes). The 250 Hz run uses
``allow_rate_mismatch`` (the checkpoint was trained at 100 Hz).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "test"))

FAULTS = [["stale_js", 0.5], ["nan", 0.5], ["drop_joint", 0.5], ["freeze", 0.5], ["stale_target", 0.8]]


def run_rate(rate: float, args, work: Path) -> dict:
    from test_controller_lab import ARM, controller, readme_config, stop, trained_checkpoint, write_config

    from smiling_ros.ros.dds_env import child_env, free_domain_id

    env = child_env(domain_id=free_domain_id())
    cfg, ckpt = write_config(work), trained_checkpoint(work)
    phases = [["ok", args.normal]]
    for _ in range(args.rounds):
        for f in FAULTS:
            phases += [f, ["ok", 1.2]]
    params = [f"config:={cfg}", f"checkpoint:={ckpt}", f"control_rate_hz:={rate}", "allow_rate_mismatch:=true"]
    ctl = controller(env, work / f"ctl_{rate:g}.log", *params)
    arm = subprocess.Popen([sys.executable, str(ARM), str(work / "arm.json"), json.dumps(phases)], env=env,
                           stdout=open(work / f"arm_{rate:g}.log", "w"), stderr=subprocess.STDOUT)
    try:
        if arm.wait(600) != 0:
            raise RuntimeError((work / f"arm_{rate:g}.log").read_text()[-2000:])
    finally:
        if arm.poll() is None:
            arm.kill()
        stop(ctl)
    run = json.loads((work / "arm.json").read_text())
    period = 1.0 / rate
    wd = readme_config()["controller"]["watchdog_periods"]
    max_age = {"js": wd * max(period, 1 / 500.0), "target": wd * max(period, 1 / 10.0)}
    cmds = [(t, np.asarray(v)) for t, v in run["commands"]]
    zero = [bool(np.all(v == 0)) for _, v in cmds]
    normal = run["phases"][0]
    t_n = [t for t, _ in cmds if normal["start"] + 1.0 <= t < normal["end"]]  # 1 s settling
    gaps = np.diff(t_n) if len(t_n) > 1 else np.array([np.nan])
    out = {"rate_hz": rate, "normal_s": normal["end"] - normal["start"] - 1.0,
           "commands_per_s": len(t_n) / (normal["end"] - normal["start"] - 1.0),
           "zero_commands": int(sum(z for (t, _), z in zip(cmds, zero) if normal["start"] <= t < normal["end"])),
           "max_gap_ms": float(np.max(gaps) * 1e3), "faults": {}}
    ph = run["phases"]
    for i, p in enumerate(ph):
        if p["phase"] == "ok" or i + 1 >= len(ph):
            continue
        ok = ph[i + 1]
        kind = p["phase"]
        good = ok.get("first_good_target" if kind == "stale_target" else "first_good", ok["start"])
        if kind == "stale_js":
            t0 = p["last_good_js"] + max_age["js"]
        elif kind == "stale_target":
            t0 = p["last_good_target"] + max_age["target"]
        elif kind == "freeze":
            t0 = p["start"] + max_age["js"]  # the frozen sample is the last new one
        else:
            t0 = p["start"]
        stops = [t for (t, _), z in zip(cmds, zero) if z and p["start"] <= t < good]
        resumed = [t for (t, _), z in zip(cmds, zero) if not z and t >= good]
        rec = out["faults"].setdefault(kind, {"stop_periods": [], "resume_periods": [], "missed": 0})
        if not stops or not resumed:
            rec["missed"] += 1
            continue
        rec["stop_periods"].append((stops[0] - t0) / period)
        rec["resume_periods"].append((resumed[0] - good) / period)
    for rec in out["faults"].values():
        for k in ("stop_periods", "resume_periods"):
            v = rec[k]
            rec[k.replace("_periods", "_median")] = float(np.median(v)) if v else float("nan")
            rec[k.replace("_periods", "_max")] = float(np.max(v)) if v else float("nan")
    log = (work / f"ctl_{rate:g}.log").read_text()
    out["fault_episodes_logged"] = log.count("stopped commanding")
    out["faults_injected"] = args.rounds * len(FAULTS)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[100.0, 250.0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--normal", type=float, default=10.0, help="normal window before the faults [s]")
    ap.add_argument("--out", default=str(HERE / "results_lab.json"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="lab_bench_") as tmp:
        for rate in args.rates:
            work = Path(tmp) / f"r{rate:g}"
            work.mkdir()
            t0 = time.monotonic()
            results.append(run_rate(rate, args, work))
            print(f"{rate:g} Hz done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    doc = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpus": __import__("os").cpu_count(),
           "args": vars(args), "results": results}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"{'rate':>6} {'cmd/s':>7} {'zeros':>5} {'max gap ms':>10} {'episodes':>9}")
    for r in results:
        print(f"{r['rate_hz']:>6g} {r['commands_per_s']:>7.1f} {r['zero_commands']:>5d} {r['max_gap_ms']:>10.1f} "
              f"{r['fault_episodes_logged']:>4d}/{r['faults_injected']:<4d}")
    print(f"\n{'rate':>6} {'fault':>13} {'stop p50':>9} {'stop max':>9} {'resume p50':>11} {'resume max':>11} missed"
          "   (control periods)")
    for r in results:
        for kind, rec in r["faults"].items():
            print(f"{r['rate_hz']:>6g} {kind:>13} {rec['stop_median']:>9.1f} {rec['stop_max']:>9.1f} "
                  f"{rec['resume_median']:>11.1f} {rec['resume_max']:>11.1f} {rec['missed']:>6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
