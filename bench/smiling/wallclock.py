"""Wall-clock per env step: SMILING beside plain SAC (and SMILING with the public code's cost
estimator), interleaved in one process so they see the same machine load.

Each variant is a real training run of smiling_ros.methods.smiling.trainer.run. After the
``learning_starts`` random steps the runs advance in alternating chunks (resume), and each chunk's
time per env step in the update phase (env step + SAC update + reward relabelling + learner
rounds; setup, evaluation and checkpoint time excluded) is recorded. Reported: the median per
variant and the median of the per-chunk ratios to plain SAC.

    python bench/smiling/wallclock.py --task hopper --chunks 6 --chunk 1000
    python bench/smiling/wallclock.py --task arm --chunks 6 --chunk 1000
Writes bench/smiling/wallclock_<task>.json.
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

VARIANTS = {
    "sac": ("sac", {}),
    "smiling": ("smiling", {}),  # the config's estimator (default: T=1000, K=4 stratified, informative)
    "smiling_official_cost": ("smiling", dict(T=5000, K=500, timesteps="grid", min_abar=0.0, min_sigma=0.0)),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["arm", "hopper"], required=True)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--chunk", type=int, default=1000, help="env steps per chunk")
    ap.add_argument("--learning-starts", type=int, default=1000)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--official-chunk", type=int, default=None,
                    help="env steps per chunk for the official-cost variant (it is slow)")
    ap.add_argument("--expert", default=None, help="expert policy for the demos (default: config's expert)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from smiling_ros.config import load_config
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.data.evaluation import expert_spec, resolve_policy, run_episodes
    from smiling_ros.methods.smiling.trainer import default_env_fn, run

    cfg_path = REPO / ("config/arm_reach.yaml" if args.task == "arm" else "config/hopper.yaml")
    base = load_config(cfg_path)
    work = Path(args.work or f"/tmp/smiling_bench/wallclock_{args.task}")
    work.mkdir(parents=True, exist_ok=True)
    dpath = work / "demos"
    if not dpath.exists():
        env = default_env_fn(base)()
        pol = resolve_policy(args.expert or expert_spec(base), env, seed=1)
        eps = run_episodes(pol, env, 5, seed=300, record=True)
        env.close()
        Dataset.from_episodes([(e["obs"], e["act"]) for e in eps], {"task": base.task.env}).save(dpath)
    ds = Dataset.load(dpath)

    def cfg_for(over):
        c = load_config(cfg_path)
        sm = dict(c.smiling)
        sm.update(over, eval_episodes=0, checkpoint_every=10**9, log_every=10**9)
        sm["sac"] = {**dict(sm.get("sac", {})), "learning_starts": args.learning_starts}
        c.smiling = sm
        return c

    steps = {v: args.learning_starts for v in args.variants}
    per_chunk: dict[str, list[float]] = {v: [] for v in args.variants}
    setup = {}
    for v in args.variants:  # random-action phase (and the expert net) first, not timed
        method, over = VARIANTS[v]
        d = work / v
        if (d / "state.safetensors").exists():
            import shutil

            shutil.rmtree(d)
        t0 = time.perf_counter()
        run(method, cfg_for(over), ds if method != "sac" else None, d, total_steps=steps[v], progress=False, seed=0)
        setup[v] = time.perf_counter() - t0
    for c in range(args.chunks):
        for v in args.variants:
            method, over = VARIANTS[v]
            n = args.official_chunk if (v == "smiling_official_cost" and args.official_chunk) else args.chunk
            steps[v] += n
            run(method, cfg_for(over), ds if method != "sac" else None, work / v, total_steps=steps[v], resume=True,
                progress=False, seed=0)
            s = json.loads((work / v / "summary.json").read_text())
            per_chunk[v].append(s["wall_clock"]["update_phase_s_per_step"])
            print(f"chunk {c} {v:24s} {1000 * per_chunk[v][-1]:8.2f} ms/env step", flush=True)
    out = {"task": base.task.env, "chunks": args.chunks, "chunk_steps": args.chunk,
           "official_chunk_steps": args.official_chunk, "learning_starts": args.learning_starts,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs), torch threads "
                      f"{args.threads}, load avg at end {os.getloadavg()[0]:.1f}",
           "command": "python bench/smiling/wallclock.py " + " ".join(sys.argv[1:]),
           "ms_per_env_step": {v: {"per_chunk": [1000 * x for x in xs], "median": 1000 * float(np.median(xs))}
                               for v, xs in per_chunk.items()}}
    if "sac" in per_chunk:
        for v in per_chunk:
            if v != "sac":
                r = [a / b for a, b in zip(per_chunk[v], per_chunk["sac"])]
                out[f"ratio_{v}_over_sac"] = {"per_chunk": r, "median": float(np.median(r))}
    summ = json.loads((work / "smiling" / "summary.json").read_text()) if "smiling" in per_chunk else {}
    out["smiling_reward_metrics"] = summ.get("reward_metrics")
    path = HERE / f"wallclock_{args.task}.json"
    path.write_text(json.dumps(out, indent=1))
    for v, m in out["ms_per_env_step"].items():
        r = out.get(f"ratio_{v}_over_sac")
        print(f"{v:24s} median {m['median']:8.2f} ms/env step" + (f"   {r['median']:.2f}x SAC" if r else ""))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
