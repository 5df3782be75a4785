"""SMILING vs DAC vs BC (and plain SAC on the env reward) on Hopper-v5 and the own arm task.

Normalised return against env steps (mean +- std over seeds) in one plot and one JSON, and
SMILING's wall-clock per env step beside plain SAC's, measured in the same run (runs interleaved
seed by seed, same machine). Every method uses the same demos, seeds, SAC and env-step budget.

    python bench/smiling/run.py --task arm --steps 30000 --seeds 0 1 2
    python bench/smiling/run.py --task hopper --expert sim/experts/hopper.safetensors --episodes 5 \\
        --steps 300000 --seeds 0 1 2

Runs live in --work (default /tmp/smiling_bench/<task>); a finished run (summary.json with the
same step count) is reused, so an interrupted benchmark continues where it stopped. Results:
bench/smiling/results_<task>.json and .png (and results.png combining the tasks found).
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

TASKS = {"arm": "config/arm_reach.yaml", "hopper": "config/hopper.yaml"}
COLORS = {"smiling": "C0", "dac": "C1", "bc": "C2", "sac": "C7"}


def make_demos(cfg, task: str, expert: str, episodes: int, out: Path):
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.data.evaluation import resolve_policy, run_episodes
    from smiling_ros.methods.smiling.trainer import default_env_fn

    if out.exists():
        return Dataset.load(out)
    env = default_env_fn(cfg)()
    pol = resolve_policy(expert, env, seed=123)
    eps = run_episodes(pol, env, episodes, seed=777, record=True)
    env.close()
    rets = [e["return"] for e in eps]
    succ = [e["success"] for e in eps]
    ds = Dataset.from_episodes([(e["obs"], e["act"]) for e in eps],
                               {"source": "bench", "task": cfg.task.env, "policy": expert, "returns": rets,
                                "expert_return": float(np.mean(rets))}, None if None in succ else succ)
    ds.save(out)
    return Dataset.load(out)


def run_one(method, cfg, ds, out: Path, steps: int, seed: int, bc_steps: int):
    from smiling_ros.methods.bc import train_bc
    from smiling_ros.methods.smiling.trainer import run

    summ = out / "summary.json"
    if summ.exists():
        s = json.loads(summ.read_text())
        if int(s["steps"]) >= (bc_steps if method == "bc" else steps):
            return s
    resume = (out / "state.safetensors").exists()
    t0 = time.time()
    if method == "bc":
        train_bc(cfg, ds, out, steps=bc_steps, progress=True, seed=seed)
    else:
        run(method, cfg, ds if method != "sac" else None, out, total_steps=steps, resume=resume, progress=True,
            seed=seed)
    print(f"  {method} seed {seed}: {time.time() - t0:.0f} s", flush=True)
    return json.loads(summ.read_text())


def curve(out: Path):
    import csv

    p = out / "eval.csv"
    if not p.exists():
        return [], []
    rows = list(csv.DictReader(open(p)))
    return [int(float(r["step"])) for r in rows], [float(r["normalized_return"]) if r["normalized_return"] else None
                                                   for r in rows]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        res = results[task]
        for method, m in res["methods"].items():
            if method == "bc":
                v = m["final_normalized_return"]
                ax.axhline(v["mean"], color=COLORS[method], ls="--", label=f"BC ({res['bc_steps']} grad steps)")
                continue
            steps, mean, std = m["curve"]["steps"], np.array(m["curve"]["mean"]), np.array(m["curve"]["std"])
            label = {"smiling": "SMILING", "dac": "DAC", "sac": "SAC (env reward)"}[method]
            ax.plot(steps, mean, "o-", ms=3, color=COLORS[method], label=label)
            ax.fill_between(steps, mean - std, mean + std, color=COLORS[method], alpha=0.2)
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
        ax.axhline(0.0, color="k", lw=0.6, ls=":")
        ax.set_title(f"{res['env']} ({len(res['seeds'])} seeds, {res['demo_episodes']} expert episodes"
                     f"{', reduced steps' if res.get('reduced') else ''})", fontsize=9)
        ax.set_xlabel("env steps")
        ax.set_ylabel("normalised return")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=list(TASKS), required=True)
    ap.add_argument("--steps", type=int, required=True, help="env steps per RL run")
    ap.add_argument("--paper-steps", type=int, default=None,
                    help="the target budget; when --steps is smaller the output says 'reduced steps'")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["smiling", "dac", "bc", "sac"])
    ap.add_argument("--expert", default=None, help="expert policy for the demos (default: config's expert)")
    ap.add_argument("--episodes", type=int, default=5, help="expert episodes in the demos")
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--eval-episodes", type=int, default=5)
    ap.add_argument("--bc-steps", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="smiling-section overrides (YAML values), e.g. learning_starts via sac.learning_starts=2000")
    ap.add_argument("--work", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    import yaml

    torch.set_num_threads(args.threads)
    from smiling_ros.config import load_config
    from smiling_ros.data.evaluation import expert_spec

    cfg = load_config(REPO / TASKS[args.task])
    sm = dict(cfg.smiling)
    sm["eval_every"] = args.eval_every or max(1000, args.steps // 10)
    sm["eval_episodes"] = args.eval_episodes
    sm["checkpoint_every"] = max(sm["eval_every"], 10_000)
    sm["total_steps"] = args.steps
    for kv in args.set:
        key, _, val = kv.partition("=")
        d = sm
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = yaml.safe_load(val)
    cfg.smiling = sm
    bc_steps = args.bc_steps or dict(sm.get("bc", {})).get("steps", 10000)
    work = Path(args.work or f"/tmp/smiling_bench/{args.task}")
    work.mkdir(parents=True, exist_ok=True)
    expert = args.expert or expert_spec(cfg)
    if expert is None:
        raise SystemExit("no expert: pass --expert")
    ds = make_demos(cfg, args.task, expert, args.episodes, work / f"demos_{args.episodes}ep")
    print(f"demos: {ds.num_episodes} episodes, {len(ds.obs)} states, expert return {ds.meta['expert_return']:.1f}",
          flush=True)

    summaries: dict[str, list] = {m: [] for m in args.methods}
    for seed in args.seeds:  # interleaved: every method of a seed before the next seed
        for method in args.methods:
            summaries[method].append(run_one(method, cfg, ds, work / f"{method}_s{seed}", args.steps, seed, bc_steps))

    out = {"env": cfg.task.env, "task": args.task, "steps": args.steps, "paper_steps": args.paper_steps,
           "reduced": bool(args.paper_steps and args.steps < args.paper_steps), "seeds": args.seeds,
           "demo_episodes": ds.num_episodes, "demo_states": int(len(ds.obs)), "expert": str(expert),
           "expert_return": ds.meta["expert_return"], "bc_steps": bc_steps, "overrides": args.set,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
                      f"{args.threads}, load avg at end {os.getloadavg()[0]:.1f}",
           "command": " ".join([sys.executable.split('/')[-1]] + sys.argv), "methods": {}}
    for method, ss in summaries.items():
        finals = [float(s["final_eval"]["normalized_return"]) for s in ss
                  if s.get("final_eval") and s["final_eval"].get("normalized_return") not in ("", None)]
        m = {"final_normalized_return": {"per_seed": finals, "mean": float(np.mean(finals)) if finals else None,
                                         "std": float(np.std(finals)) if finals else None},
             "final_return": [float(s["final_eval"]["mean_return"]) for s in ss if s.get("final_eval")],
             "references": ss[0].get("references")}
        if method != "bc":
            curves = [curve(work / f"{method}_s{seed}") for seed in args.seeds]
            # evaluation steps every seed has (a resumed run may have used another eval_every)
            steps = sorted(set.intersection(*[set(c[0]) for c in curves])) if curves else []
            vals = np.array([[dict(zip(*c)).get(st) for st in steps] for c in curves], dtype=float)
            m["curve"] = {"steps": steps, "mean": np.nanmean(vals, 0).tolist(), "std": np.nanstd(vals, 0).tolist(),
                          "per_seed": vals.tolist()}
            wc = [s["wall_clock"] for s in ss]
            m["wall_clock"] = {
                "train_s_per_step": [w["train_s_per_step"] for w in wc],
                "median_train_ms_per_step": 1000 * float(np.median([w["train_s_per_step"] for w in wc])),
                "update_phase_s_per_step": [w.get("update_phase_s_per_step") for w in wc],
                "median_update_phase_ms_per_step": 1000 * float(np.median([w.get("update_phase_s_per_step") or np.nan
                                                                          for w in wc])),
                "reward_s": [w["reward_s"] for w in wc], "learner_s": [w["learner_s"] for w in wc],
                "setup_s": [w["setup_s"] for w in wc]}
        summaries[method] = m
        out["methods"][method] = m
    # Wall-clock ratios per seed (runs of a seed are adjacent in time), over the whole run and over
    # the update phase (after SAC's learning_starts random steps, where the methods differ).
    for other in ("smiling", "dac"):
        if other in out["methods"] and "sac" in out["methods"]:
            ratios = {}
            for key in ("train_s_per_step", "update_phase_s_per_step"):
                a = out["methods"][other]["wall_clock"][key]
                b = out["methods"]["sac"]["wall_clock"][key]
                r = [x / y for x, y in zip(a, b) if x and y]
                ratios[key] = {"per_seed": r, "median": float(np.median(r)) if r else None}
            out[f"wall_clock_ratio_{other}_over_sac"] = ratios
    res_path = HERE / f"results_{args.task}.json"
    res_path.write_text(json.dumps(out, indent=1))
    plot({args.task: out}, HERE / f"results_{args.task}.png")
    combined = {}
    for t in TASKS:
        p = HERE / f"results_{t}.json"
        if p.exists():
            combined[t] = json.loads(p.read_text())
    plot(combined, HERE / "results.png")
    (HERE / "results.json").write_text(json.dumps(combined, indent=1))
    print(f"\n{cfg.task.env}: {args.steps} env steps" + (" (REDUCED from %d)" % args.paper_steps if out["reduced"] else "")
          + f", seeds {args.seeds}, {ds.num_episodes} expert episodes")
    for method, m in out["methods"].items():
        f = m["final_normalized_return"]
        line = f"  {method:8s} final normalised return {f['mean']:.3f} +- {f['std']:.3f}" if f["mean"] is not None else \
            f"  {method:8s} (no normalised return)"
        if "wall_clock" in m:
            line += (f"   {m['wall_clock']['median_train_ms_per_step']:.1f} ms/env step"
                     f" ({m['wall_clock']['median_update_phase_ms_per_step']:.1f} in the update phase)")
        print(line)
    for other in ("smiling", "dac"):
        r = out.get(f"wall_clock_ratio_{other}_over_sac")
        if r:
            print(f"  {other} / SAC wall-clock per env step: whole run {r['train_s_per_step']['median']:.2f}x, "
                  f"update phase {r['update_phase_s_per_step']['median']:.2f}x (median over seeds)")
    print(f"wrote {res_path} and {HERE / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
