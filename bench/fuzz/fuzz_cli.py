"""Fuzz the `smiling-ros` command line over file-system states.

Each input is a small world: for every path a command reads or writes (config, dataset and its
files, checkpoint, bag, --out and the files beside it) hypothesis picks a state: missing, good,
garbage bytes, empty, an empty or non-empty directory, a FIFO, a link to /dev/zero, a link to a
good file, a dangling link, a link loop, deeply nested JSON; and whether --overwrite is given. The
command runs through the CLI entry point in a child process with a per-case time limit
(test/cli_batch.py). Invariants checked on every run:

- no hang, no traceback; exit status 0, or non-zero with exactly one stderr error line;
- a failed run leaves the world exactly as it was (every file hashed before and after);
- without --overwrite, nothing that existed before is changed, even by a successful run;
- with --overwrite, only the command's own outputs change.

Usage: python bench/fuzz/fuzz_cli.py [--seconds 120] [--batch 24] [--out bench/fuzz/out]
Prints the figures and writes OUT/results_cli.json (violations with their worlds).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "test"))
sys.path.insert(0, str(REPO))

STATES = ["missing", "good", "garbage", "empty", "empty_dir", "full_dir", "fifo", "dev_zero", "link_good",
          "dangling", "loop", "deep_json"]
VERBS = ["eval", "train-bc", "train-dbc", "import-bag", "rollout"]


class World:
    """Builds one world under ``root`` from a dict of role -> state."""

    def __init__(self, root: Path, goods: dict[str, Path]):
        self.root, self.goods = root, goods

    def put(self, path: Path, state: str, good: Path | None) -> None:
        if state == "missing":
            return
        if state == "good":
            if good is None:
                return
            (shutil.copytree if good.is_dir() else shutil.copy2)(good, path)
        elif state == "garbage":
            path.write_bytes(os.urandom(64) + b"{[\x80\x00")
        elif state == "empty":
            path.write_bytes(b"")
        elif state == "empty_dir":
            path.mkdir()
        elif state == "full_dir":
            path.mkdir()
            (path / "notes.txt").write_text("someone's notes")
        elif state == "fifo":
            os.mkfifo(path)
        elif state == "dev_zero":
            os.symlink("/dev/zero", path)
        elif state == "link_good":
            if good is not None:
                os.symlink(good, path)
        elif state == "dangling":
            os.symlink(path.with_name("nowhere"), path)
        elif state == "loop":
            os.symlink(path.name, path)
        elif state == "deep_json":
            path.write_text("[" * 100_000 + "]" * 100_000)


def case_for(verb: str, w: Path, states: dict[str, str], overwrite: bool, goods: dict[str, Path]) -> dict:
    world = World(w, goods)
    cfg, ck, ds, bag, out = w / "cfg.yaml", w / "ck.safetensors", w / "ds", w / "bag", w / "out"
    world.put(cfg, states["config"], goods["config"])
    cfg_arg = str(cfg)
    if verb == "eval":
        world.put(ck, states["checkpoint"], goods["checkpoint"])
        argv = ["eval", "--checkpoint", str(ck), "--config", cfg_arg, "--episodes", "1"]
        outputs: list[Path] = []
    elif verb in ("train-bc", "train-dbc"):
        world.put(ds, states["dataset"], goods["dataset"])
        if states["dataset"] == "good" and states["dataset_file"] != "good":
            target = ds / ("meta.json" if len(states["dataset_file"]) % 2 else "data.safetensors")
            target.unlink()
            world.put(target, states["dataset_file"], None)
        if verb == "train-dbc":
            out = w / "out.safetensors"
            argv = ["train-dbc", "--config", cfg_arg, "--dataset", str(ds), "--out", str(out), "--steps", "1",
                    "--dm-steps", "1", "--quiet"]
            world.put(out, states["out"], goods["checkpoint"])
            world.put(w / "out.json", states["sibling"], None)
            outputs = [out, w / "out.json", w / "out_log.csv", w / "out_log.png", w / "out.dm.safetensors",
                       w / "out.dm.json"]
        else:
            argv = ["train-bc", "--config", cfg_arg, "--dataset", str(ds), "--out", str(out), "--steps", "1",
                    "--no-progress"]
            world.put(out, states["out"], None)
            outputs = [out]
    elif verb == "import-bag":
        world.put(bag, states["bag"], goods["bag"])
        world.put(out, states["out"], goods["dataset"])
        argv = ["import-bag", str(bag), "--config", str(goods["bag_config"]), "--out", str(out)]
        outputs = [out]
    else:
        world.put(out, states["out"], goods["dataset"])
        argv = ["rollout", "--config", cfg_arg, "--policy", "random", "--episodes", "1", "--out", str(out)]
        outputs = [out]
    if overwrite and verb != "eval":  # eval writes nothing
        argv.append("--overwrite")
    return {"argv": argv, "world": str(w), "states": states, "overwrite": overwrite,
            "outputs": [str(p) for p in outputs]}


def make_goods(d: Path) -> dict[str, Path]:
    import numpy as np
    import torch
    from badbags import demo_bag, write_config

    from smiling_ros.data.dataset import Dataset, Normalizer
    from smiling_ros.learn.policy import MlpActor, MlpPolicy

    rng = np.random.default_rng(0)
    eps = [(rng.normal(size=(30, 8)).astype(np.float32), rng.uniform(-1, 1, (30, 2)).astype(np.float32))
           for _ in range(2)]
    ds = Dataset.from_episodes(eps, {"task": "smiling_ros/ArmReach-v0"}).save(d / "good_ds")
    torch.manual_seed(0)
    ck = MlpPolicy(MlpActor(8, 2, [16]), Normalizer.identity(8), -np.ones(2), np.ones(2),
                   {"task": "smiling_ros/ArmReach-v0"}).save(d / "good.safetensors")
    cfg = d / "good.yaml"
    shutil.copy2(REPO / "config" / "arm_reach.yaml", cfg)
    bag = demo_bag(d / "good_bag", "mcap", episodes=2, seconds=1.0)["path"]
    return {"dataset": ds, "checkpoint": ck, "config": cfg, "bag": bag,
            "bag_config": write_config(d / "bag_cfg.yaml")}


def draw_batch(n: int, *strategies) -> list[tuple]:
    """``n`` tuples drawn by hypothesis from ``strategies``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    drawn: list[tuple] = []

    @settings(max_examples=n, deadline=None, phases=[Phase.generate], database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.tuples(*strategies))
    def draw(values):
        drawn.append(values)

    draw()
    return drawn


def judge(res: dict, before: dict, after: dict) -> list[str]:
    """Invariant violations of one run (empty: fine)."""
    bad = []
    if res["hang"]:
        return ["hang"]
    if res["traceback"] is not None or "Traceback" in res["err"] + res["out"]:
        return ["traceback: " + (res["traceback"] or res["err"])[-300:]]
    import re

    lines = [ln for ln in res["err"].splitlines() if ln.strip() and not re.search(r"\d+%\|", ln)]
    if res["rc"] != 0:
        if len(lines) != 1 or not lines[0].startswith(f"smiling-ros {res['argv'][0]}: error: "):
            bad.append(f"{len(lines)} stderr lines: {res['err'][-300:]}")
        if before != after:
            bad.append("a failed run changed files")
        return bad
    world = res["world"]
    outs = [os.path.relpath(p, world) for p in res["outputs"]]
    for k, v in before.items():
        if after.get(k) == v:
            continue
        mine = any(k == o or k.startswith(o + os.sep) for o in outs)
        if not res["overwrite"] or not mine:
            bad.append(f"pre-existing '{k}' changed ({'no --overwrite' if not res['overwrite'] else 'not an output'})")
    return bad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--batch", type=int, default=24, help="cases per child process")
    p.add_argument("--out", default=str(REPO / "bench/fuzz/out"))
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from cli_batch import run_batch, snapshot
    from hypothesis import strategies as st

    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fuzzcli."))
    goods = make_goods(work)
    roles = ["config", "checkpoint", "dataset", "dataset_file", "bag", "out", "sibling"]
    counts: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    violations: list[dict] = []
    t0 = time.monotonic()
    n_world = 0
    # a role is good (or, for outputs, missing) half of the time, so that runs also succeed
    likely = {r: (["missing"] if r in ("out", "sibling") else ["good"]) * len(STATES) for r in roles}
    try:
        while time.monotonic() - t0 < a.seconds:
            drawn = draw_batch(a.batch, st.sampled_from(VERBS),
                               st.fixed_dictionaries({r: st.sampled_from(likely[r] + STATES) for r in roles}),
                               st.booleans())
            cases, befores = [], []
            for verb, states, overwrite in drawn:
                w = work / f"w{n_world}"
                n_world += 1
                w.mkdir()
                cases.append(case_for(verb, w, states, overwrite, goods))
                befores.append(snapshot(w))
            results = run_batch(cases, work, case_timeout_s=60, total_timeout_s=1800)
            for res, before in zip(results, befores):
                after = snapshot(Path(res["world"]))
                bad = judge(res, before, after)
                counts["runs"] += 1
                counts["ok" if res["rc"] == 0 else "refused"] += 1
                if not res["rc"] == 0:
                    kinds[res["err"].strip().splitlines()[-1].split(": error: ", 1)[-1].split(": ", 1)[-1][:50]] += 1
                if bad:
                    counts["violations"] += 1
                    violations.append({"argv": res["argv"], "states": res["states"], "problems": bad})
                shutil.rmtree(res["world"], ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - t0
    doc = {"seconds": round(elapsed, 1), "runs": counts["runs"], "succeeded": counts["ok"],
           "refused": counts["refused"], "violations": counts["violations"], "cpus": os.cpu_count(),
           "refusal_kinds": dict(kinds.most_common(30)), "violation_samples": violations[:20]}
    (out_dir / "results_cli.json").write_text(json.dumps(doc, indent=1))
    print(f"fuzz (cli, {doc['seconds']} s): {doc['runs']} runs over file-system states, {doc['succeeded']} succeeded, "
          f"{doc['refused']} refused with one line, {doc['violations']} violations")
    for k, v in kinds.most_common(10):
        print(f"  {v:5d}  {k}")
    for v in violations[:10]:
        print(f"  VIOLATION {v['argv'][0]} {v['states']}: {v['problems'][0][:200]}")
    print(f"wrote {out_dir / 'results_cli.json'}")


if __name__ == "__main__":
    main()
