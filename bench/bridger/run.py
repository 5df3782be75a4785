"""BRIDGER offline benchmark: success / return against sampling steps per source, both expert
modes, and per-action latency on the CPU.

Tasks: the own ArmReach (scripted expert, left/right of the post; passing side from
smiling_ros.envs.passing_side) and Gymnasium's Reacher-v5 (scripted IK + PD expert with two
elbow branches, reacher_expert.py). Per task: demonstrations from the expert, then one BRIDGER
per source (gaussian, cvae, heuristic [ArmReach], bc = a trained MLP policy), each evaluated at
steps {1, 2, 5, 10} (and "0" = the source alone) on the same episode seeds.

    nice python bench/bridger/run.py                                      # full run (~30 min, 2 cores)
    python bench/bridger/run.py --reuse --latency-only                    # re-measure latency only
    chrt -f 20 python bench/bridger/run.py --reuse --latency-only         # ... under SCHED_FIFO
    nice python bench/bridger/run.py --quick --out /tmp/bq --work /tmp/bq  # smoke run (minutes)

Writes OUT/results.json, OUT/bridger_bench.png, OUT/table.txt (the printed table). Demos,
checkpoints and training logs go to WORK/<task>/ (default runs/bench_bridger, not tracked;
reused with --reuse).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reacher_expert import ReacherExpert, SuccessInfo, elbow_mode  # noqa: E402

from smiling_ros.methods.bridger.sources import HeuristicSource  # noqa: E402
from smiling_ros.methods.bridger.train import BridgerConfig, CvaeConfig, make_source, train_bridger  # noqa: E402
from smiling_ros.learn.checkpoint import atomic_write_text  # noqa: E402
from smiling_ros.data.dataset import Dataset  # noqa: E402
from smiling_ros.envs import ARM_REACH, ScriptedExpert, make_env, passing_side  # noqa: E402
from smiling_ros.data.evaluation import run_episodes  # noqa: E402
from smiling_ros.learn.policy import MlpActor, MlpPolicy, load_policy  # noqa: E402

STEPS = [1, 2, 5, 10]


class SourceAsPolicy:
    """A source's raw samples as a policy (steps = 0 in the table), clamped like BRIDGER's."""

    def __init__(self, source, low, high):
        self.source, self.low, self.high = source, low, high
        self.obs_dim, self.act_dim = source.obs_dim, source.act_dim

    def reset(self, obs=None):
        pass

    def act(self, obs):
        return np.clip(self.source.sample(obs), self.low, self.high)


def task_spec(name: str):
    if name == "arm":
        return {"env_fn": lambda: make_env(ARM_REACH), "expert": lambda seed: ScriptedExpert(seed=seed),
                "side_fn": passing_side, "modes": ("left", "right"), "sources": ["gaussian", "cvae", "heuristic", "bc"],
                "env_id": ARM_REACH}
    if name == "reacher":
        return {"env_fn": lambda: SuccessInfo(make_env("Reacher-v5")), "expert": lambda seed: ReacherExpert(seed=seed),
                "side_fn": elbow_mode, "modes": ("up", "down"), "sources": ["gaussian", "cvae", "bc"],
                "env_id": "Reacher-v5"}
    raise SystemExit(f"unknown task {name}")


def demos(spec, n: int, path: Path) -> Dataset:
    if path.exists():
        return Dataset.load(path)
    env = spec["env_fn"]()
    eps = run_episodes(spec["expert"](100), env, n, seed=100, record=True)
    env.close()
    sides = [spec["side_fn"](e["obs"]) for e in eps]
    ds = Dataset.from_episodes([(e["obs"], e["act"]) for e in eps],
                               {"task": spec["env_id"], "expert_return": float(np.mean([e["return"] for e in eps])),
                                "modes": {m: sides.count(m) for m in spec["modes"]}},
                               [bool(e["success"]) for e in eps])
    ds.save(path)
    return Dataset.load(path)


def train_bc_policy(ds: Dataset, low, high, steps: int, path: Path, seed: int = 0) -> Path:
    """A plain behavioural-cloning MLP (mlp_policy): MSE on tanh outputs scaled to [low, high]."""
    if path.exists():
        return path
    torch.manual_seed(seed)
    norm = ds.obs_normalizer()
    actor = MlpActor(ds.obs_dim, ds.act_dim, [256, 256])
    pol = MlpPolicy(actor, norm, low, high, {"task": ds.meta.get("task", ""), "trainer": "bench bc"})
    O = torch.as_tensor(norm.normalize(ds.obs))
    A = pol.unscale(torch.as_tensor(ds.act))
    opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = torch.as_tensor(rng.integers(0, len(O), 256))
        loss = ((actor(O[idx]) - A[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return pol.save(path)


def evaluate(policy, spec, steps_list, episodes, seed):
    env = spec["env_fn"]()
    rows = []
    try:
        for n in steps_list:
            if n > 0:
                policy.steps = n
            if hasattr(policy, "seed"):
                policy.seed(seed)
            t0 = time.perf_counter()
            eps = run_episodes(policy, env, episodes, seed, record=True)
            sides = [spec["side_fn"](e["obs"]) for e in eps]
            succ = [e["success"] for e in eps]
            rows.append({"steps": n, "success_rate": float(np.mean(succ)),
                         "mean_return": float(np.mean([e["return"] for e in eps])),
                         "std_return": float(np.std([e["return"] for e in eps])),
                         "modes": {m: sides.count(m) for m in spec["modes"]},
                         "modes_success": {m: int(sum(s == m and ok for s, ok in zip(sides, succ))) for m in spec["modes"]},
                         "eval_s": time.perf_counter() - t0})
    finally:
        env.close()
    return rows


def latency(policy, obs: np.ndarray, steps: int, n: int) -> dict:
    """Per-action act() time for single observations: wall clock and this thread's CPU time (us)."""
    policy.steps = steps
    policy.reset()
    for o in obs[:100]:
        policy.act(o)
    wall, cpu = [], []
    for i in range(n):
        o = obs[i % len(obs)]
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        policy.act(o)
        cpu.append(time.thread_time_ns() - c0)
        wall.append(time.perf_counter_ns() - w0)
    w, c = np.asarray(wall) / 1e3, np.asarray(cpu) / 1e3
    return {"steps": steps, "n": n, "wall_p50_us": float(np.percentile(w, 50)), "wall_p99_us": float(np.percentile(w, 99)),
            "cpu_p50_us": float(np.percentile(c, 50)), "cpu_p99_us": float(np.percentile(c, 99))}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(len(tasks), 3, figsize=(13, 3.6 * len(tasks)), squeeze=False)
    for r, task in enumerate(tasks):
        res = results["tasks"][task]
        for src, rows in res["sources"].items():
            xs = [row["steps"] for row in rows["eval"] if row["steps"] > 0]
            ys = [row["success_rate"] for row in rows["eval"] if row["steps"] > 0]
            rs = [row["mean_return"] for row in rows["eval"] if row["steps"] > 0]
            line = axes[r, 0].plot(xs, ys, "o-", label=src)[0]
            axes[r, 1].plot(xs, rs, "o-", label=src, color=line.get_color())
            src0 = [row for row in rows["eval"] if row["steps"] == 0]
            if src0 and src != "gaussian":
                axes[r, 0].axhline(src0[0]["success_rate"], ls=":", color=line.get_color(), lw=1)
                axes[r, 1].axhline(src0[0]["mean_return"], ls=":", color=line.get_color(), lw=1)
        modes = list(res["demo_modes"])
        names = list(res["sources"])
        width = 0.8 / len(STEPS)
        for j, n in enumerate(STEPS):
            frac = []
            for src in names:
                row = [x for x in res["sources"][src]["eval"] if x["steps"] == n][0]
                tot = max(1, sum(row["modes"].values()))
                frac.append(row["modes"][modes[0]] / tot)
            axes[r, 2].bar(np.arange(len(names)) + j * width, frac, width, label=f"N={n}")
        axes[r, 2].axhline(res["demo_modes"][modes[0]] / max(1, sum(res["demo_modes"].values())), color="k", ls="--",
                           lw=1, label="demos")
        axes[r, 2].set_xticks(np.arange(len(names)) + 0.4 - width / 2)
        axes[r, 2].set_xticklabels(names)
        axes[r, 2].set_ylim(0, 1)
        axes[r, 2].set_ylabel(f"fraction '{modes[0]}'")
        if res.get("expert_return") is not None:
            axes[r, 1].axhline(res["expert_return"], color="k", ls="--", lw=1, label="expert")
        axes[r, 0].set_ylabel(f"{task}: success rate")
        axes[r, 1].set_ylabel("return")
        for ax in axes[r, :2]:
            ax.set_xscale("log")
            ax.set_xticks(STEPS)
            ax.set_xticklabels([str(s) for s in STEPS])
            ax.set_xlabel("BRIDGER steps N (dotted: source alone)")
        axes[r, 0].legend(fontsize=8)
        axes[r, 1].legend(fontsize=8)
        axes[r, 2].legend(fontsize=7, ncol=3)
    fig.suptitle("BRIDGER: success / return vs sampling steps per source; mode split")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/bridger/results")
    p.add_argument("--work", default="runs/bench_bridger", help="demos, checkpoints, training logs")
    p.add_argument("--latency-only", action="store_true",
                   help="with --reuse: re-measure latency into OUT/results.json, keep the evaluation")
    p.add_argument("--tasks", default="arm,reacher")
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--train-steps", type=int, default=6000)
    p.add_argument("--cvae-steps", type=int, default=4000)
    p.add_argument("--bc-steps", type=int, default=3000)
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--latency-n", type=int, default=3000)
    p.add_argument("--hidden", default="256,256,256")
    p.add_argument("--chunk", type=int, default=1)
    p.add_argument("--reuse", action="store_true", help="reuse checkpoints already in OUT")
    p.add_argument("--quick", action="store_true", help="tiny settings (smoke run)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.demos, args.train_steps, args.cvae_steps, args.bc_steps, args.episodes, args.latency_n = 10, 300, 200, 200, 4, 300
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    if args.latency_only:
        return latency_only(args, out, work, previous)
    hidden = [int(h) for h in args.hidden.split(",")]
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "load_avg_start": os.getloadavg(), "torch": torch.__version__, "threads": 1},
               "settings": vars(args), "tasks": {}}
    t_start = time.time()
    for task in args.tasks.split(","):
        spec = task_spec(task)
        tdir = work / task
        ds = demos(spec, args.demos, tdir / "demos")
        env = spec["env_fn"]()
        low, high = env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)
        env.close()
        sec = BridgerConfig(train_steps=args.train_steps, hidden=hidden, chunk=args.chunk, eval_steps=STEPS,
                            cvae=CvaeConfig(train_steps=args.cvae_steps))
        res = {"demo_episodes": ds.num_episodes, "demo_steps": len(ds.obs), "demo_modes": ds.meta.get("modes"),
               "expert_return": ds.meta.get("expert_return"), "sources": {}}
        print(f"[{task}] {ds.num_episodes} demos, modes {ds.meta.get('modes')}, expert return {ds.meta.get('expert_return'):.2f}",
              flush=True)
        for name in spec["sources"]:
            ckpt = tdir / f"bridger_{name}.safetensors"
            t0 = time.time()
            if args.reuse and ckpt.exists():
                pol = load_policy(ckpt, device="cpu")
                train_s = previous.get("tasks", {}).get(task, {}).get("sources", {}).get(name, {}).get("train_s")
            else:
                if name == "bc":
                    src_spec = str(train_bc_policy(ds, low, high, args.bc_steps, tdir / "bc.safetensors"))
                else:
                    src_spec = name
                if name == "heuristic":
                    source = HeuristicSource("arm_reach_straight_line")
                else:
                    source = make_source(src_spec, ds, section=sec, seed=0, out=ckpt, progress=False)
                pol = train_bridger(ds, source, sec, low, high, seed=0, progress=False,
                                    log_path=ckpt.with_suffix(".train.csv"), meta={"task": spec["env_id"]})
                pol.save(ckpt)
                train_s = time.time() - t0
            rows = evaluate(SourceAsPolicy(pol.source, low, high), spec, [0], args.episodes, seed=10_000)
            rows += evaluate(pol, spec, STEPS, args.episodes, seed=10_000)
            lat = [latency(pol, ds.obs, n, args.latency_n) for n in STEPS]
            pol.numpy_single = False  # the same act() through the torch net (batch of one), for comparison
            lat.append({**latency(pol, ds.obs, 5, args.latency_n), "path": "torch"})
            pol.numpy_single = True
            res["sources"][name] = {"checkpoint": str(ckpt), "train_s": train_s, "eval": rows, "latency": lat}
            print(f"[{task}] {name}: trained in {train_s if train_s is None else round(train_s)} s; "
                  + "; ".join(f"N={r['steps']}: succ {r['success_rate']:.2f} ret {r['mean_return']:.2f} modes {r['modes']}"
                              for r in rows), flush=True)
            results["tasks"][task] = res
            atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    results["machine"]["load_avg_end"] = os.getloadavg()
    results["total_s"] = time.time() - t_start
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    plot(results, out / "bridger_bench.png")
    atomic_write_text(out / "table.txt", print_table(results))
    return 0


def sched_name() -> str:
    pol = os.sched_getscheduler(0)
    if pol == os.SCHED_FIFO:
        return f"SCHED_FIFO priority {os.sched_getparam(0).sched_priority}"
    return "SCHED_OTHER (normal)"


def latency_only(args, out: Path, work: Path, results: dict) -> int:
    """Re-measure per-action latency of the checkpoints in WORK; keep the evaluation rows."""
    if not results.get("tasks"):
        raise SystemExit(f"{out / 'results.json'}: no earlier results to add latency to (run without --latency-only)")
    fifo = os.sched_getscheduler(0) == os.SCHED_FIFO
    key = "latency_fifo" if fifo else "latency"  # normal scheduling overwrites the full run's figures
    mkey = "latency_fifo_machine" if fifo else "latency_machine"
    results[mkey] = {"load_avg_start": os.getloadavg(), "scheduler": sched_name(), "threads": 1}
    for task, res in results["tasks"].items():
        ds = Dataset.load(work / task / "demos")
        for name, r in res["sources"].items():
            pol = load_policy(work / task / f"bridger_{name}.safetensors", device="cpu")
            lat = [latency(pol, ds.obs, n, args.latency_n) for n in STEPS]
            pol.numpy_single = False
            lat.append({**latency(pol, ds.obs, 5, args.latency_n), "path": "torch"})
            r[key] = lat
    results[mkey]["load_avg_end"] = os.getloadavg()
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out / "table.txt", print_table(results))
    return 0


def print_table(results: dict) -> str:
    lines: list[str] = []
    emit = lines.append
    for task, res in results["tasks"].items():
        modes = list(res["demo_modes"])
        emit(f"\n== {task}: {res['demo_episodes']} demos (modes {res['demo_modes']}), expert return "
              f"{res['expert_return']:.2f}; success rate / mean return / {modes[0]}:{modes[1]} per step count N "
              f"(N=0: the source alone)")
        head = f"{'source':<10}" + "".join(f"{'N=' + str(n):>24}" for n in [0] + STEPS)
        emit(head)
        for src, r in res["sources"].items():
            cells = []
            for row in r["eval"]:
                m = row["modes"]
                cells.append(f"{row['success_rate']:.2f} {row['mean_return']:7.2f} {m[modes[0]]:>2}:{m[modes[1]]:<2}")
            emit(f"{src:<10}" + "".join(f"{c:>24}" for c in cells))
        for key, what in (("latency", "normal scheduling"), ("latency_fifo", "SCHED_FIFO")):
            if not all(key in r for r in res["sources"].values()):
                continue
            emit(f"{'latency':<10} act() per action, us (wall p50/p99 | thread CPU p50/p99), {what}; "
                 f"'torch' = the same act() through the torch net")
            for src, r in res["sources"].items():
                emit(f"{src:<10}" + "  ".join(f"N={x['steps']}{' torch' if x.get('path') else ''}: "
                                              f"{x['wall_p50_us']:.0f}/{x['wall_p99_us']:.0f} | "
                                              f"{x['cpu_p50_us']:.0f}/{x['cpu_p99_us']:.0f}" for x in r[key]))
        g10 = [row for row in res["sources"]["gaussian"]["eval"] if row["steps"] == 10][0]
        for src, r in res["sources"].items():
            if src == "gaussian":
                continue
            s2 = [row for row in r["eval"] if row["steps"] == 2][0]
            emit(f"target: {src} at N=2 vs gaussian at N=10: success {s2['success_rate']:.2f} vs {g10['success_rate']:.2f}, "
                  f"return {s2['mean_return']:.2f} vs {g10['mean_return']:.2f}")
    emit(f"\nmachine: {results['machine']}; total {results.get('total_s', 0):.0f} s")
    for mkey in ("latency_machine", "latency_fifo_machine"):
        if results.get(mkey):
            emit(f"{mkey}: {results[mkey]}")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
