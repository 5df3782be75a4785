"""Ablation of the DS cost's estimator: diffusion schedule, timestep range and K.

Part A (signal and cost, cheap): for each schedule, an expert score net is trained on expert
states and a learner net (warm-started) on learner states; then each estimator computes the
cost of held-out expert states and of learner states. Reported per estimator:
  - auc: P(r(expert state) > r(learner state)), how well the reward separates the two;
  - reliability: Pearson correlation of the estimate with the same nets' K=1024 estimate over the
    same timestep range (1 = no estimator noise);
  - noise_frac: fraction of evaluations at pure noise (abar_t < 1e-3);
  - rows and ms per SAC batch of 256 states (both nets, CPU).
Part B (--returns): full SMILING runs on the arm task per estimator configuration: final
normalised return and wall-clock per env step.

    python bench/smiling/ablation.py                 # part A, arm task
    python bench/smiling/ablation.py --returns --steps 8000 --seeds 0
Writes bench/smiling/ablation.json (and ablation.png with part B).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

ARM = "smiling_ros/ArmReach-v0"

# (name, schedule opts, estimator): 'official' = the public code's T=5000 linear, 500-point grid.
SCHEDULES = {
    "linear_T5000": dict(schedule="linear", T=5000),
    "linear_T1000": dict(schedule="linear", T=1000),
    "cosine_T1000": dict(schedule="cosine", T=1000),
}
ESTIMATORS = [
    ("official: T5000 grid K=500 all t", "linear_T5000", dict(K=500, timesteps="grid", min_abar=0.0, min_sigma=0.0)),
    ("T5000 stratified K=4 all t", "linear_T5000", dict(K=4, timesteps="stratified", min_abar=0.0, min_sigma=0.0)),
    ("T5000 stratified K=4 informative", "linear_T5000",
     dict(K=4, timesteps="stratified", min_abar=1e-3, min_sigma=0.0)),
    ("T1000 stratified K=4 informative", "linear_T1000",
     dict(K=4, timesteps="stratified", min_abar=1e-3, min_sigma=0.0)),
    ("T1000 stratified K=4 informative sigma>=0.3", "linear_T1000",
     dict(K=4, timesteps="stratified", min_abar=1e-3, min_sigma=0.3)),
    ("T1000 iid K=4 informative sigma>=0.5", "linear_T1000", dict(K=4, timesteps="iid", min_abar=1e-3, min_sigma=0.5)),
] + [(f"T1000 stratified K={k} informative sigma>=0.5" + (" (default)" if k == 4 else ""), "linear_T1000",
      dict(K=k, timesteps="stratified", min_abar=1e-3, min_sigma=0.5)) for k in (1, 2, 4, 8, 16, 64)] + [
    ("cosine T1000 stratified K=4 informative sigma>=0.5", "cosine_T1000",
     dict(K=4, timesteps="stratified", min_abar=1e-3, min_sigma=0.5)),
]


def arm_states(policy, episodes, seed, noise=0.0):
    from smiling_ros.envs import make_env
    from smiling_ros.data.evaluation import RandomPolicy, resolve_policy, run_episodes

    env = make_env(ARM)
    pol = RandomPolicy(env.action_space, seed) if policy == "random" else resolve_policy(policy, env, seed=seed)
    if noise:
        base, rng = pol, np.random.default_rng(seed)

        class Noisy:
            def reset(self, obs=None):
                base.reset(obs)

            def act(self, obs):
                return np.clip(base.act(obs) + noise * rng.standard_normal(2), -1, 1).astype(np.float32)

        pol = Noisy()
    eps = run_episodes(pol, env, episodes, seed=seed, record=True)
    env.close()
    return np.concatenate([e["obs"] for e in eps])


def part_a(args):
    from smiling_ros.data.dataset import Normalizer
    from smiling_ros.methods.smiling.config import SmilingSection
    from smiling_ros.methods.smiling.score import DSCost, ScorePlayer, batch_iterator, pretrain_expert

    torch.manual_seed(0)
    x_exp = arm_states("scripted", 10, seed=1)
    x_hold = arm_states("scripted", 5, seed=500)
    # learner: a mixture of a noisy expert (partial overlap) and a random policy (no overlap)
    x_lrn = np.concatenate([arm_states("scripted", 10, seed=900, noise=0.6), arm_states("random", 10, seed=901)])
    x_lrn_test = np.concatenate([arm_states("scripted", 3, seed=950, noise=0.6), arm_states("random", 3, seed=951)])
    nets = {}
    needed = {(sch, est["min_abar"], est["min_sigma"]) for _, sch, est in ESTIMATORS}
    for name, min_abar, min_sigma in sorted(needed):
        if True:
            sch = SCHEDULES[name]
            opts = SmilingSection(expert_steps=args.expert_steps, score_hidden=256, score_batch=1024,
                                  min_abar=min_abar, min_sigma=min_sigma, **sch)
            exp, norm, _ = pretrain_expert(x_exp, opts, torch.device("cpu"), seed=0)
            lrn = ScorePlayer(x_exp.shape[1], exp.schedule, exp.t_max, 256, 1, 5e-3, t_min=exp.t_min)
            lrn.load_from(exp)
            xl = torch.as_tensor(norm.normalize(x_lrn)).clamp(-10, 10)
            lrn.fit(batch_iterator(xl, 1024), args.learner_steps)
            nets[(name, min_abar, min_sigma)] = (exp, lrn, norm)
    rows = []
    xs_e = torch.as_tensor(x_hold)
    xs_l = torch.as_tensor(x_lrn_test)
    batch = torch.as_tensor(np.concatenate([x_hold, x_lrn_test])[np.random.default_rng(0).choice(
        len(x_hold) + len(x_lrn_test), 256)])
    for label, sch_name, est in ESTIMATORS:
        exp, lrn, norm = nets[(sch_name, est["min_abar"], est["min_sigma"])]
        t_min, t_max = exp.t_min, exp.t_max
        mode = est["timesteps"]
        cost = DSCost(exp.net, lrn.net, exp.schedule, norm, est["K"], t_max,
                      "stratified" if mode == "iid" else mode, 0.1, t_min=t_min)

        def estimate(x, K=None):
            if mode == "iid":  # K independent uniform draws (no stratification), for comparison
                return torch.stack([cost.raw(x, K=1) for _ in range(K or est["K"])]).mean(0)
            return cost.raw(x, K=K)

        torch.manual_seed(1)
        r_e, r_l = estimate(xs_e).numpy(), estimate(xs_l).numpy()
        ref = DSCost(exp.net, lrn.net, exp.schedule, norm, 1024, t_max, "stratified", t_min=t_min)
        both = torch.cat([xs_e, xs_l])
        r_ref = ref.raw(both).numpy()
        r_est = estimate(both).numpy()
        reliability = float(np.corrcoef(r_ref, r_est)[0, 1])
        auc = float((r_e[:, None] > r_l[None, :]).mean())
        abar = exp.schedule.abar
        if mode == "grid":
            ts = (torch.arange(est["K"]) * t_max / est["K"]).long()
        else:
            ts = torch.randint(t_min, t_max, (20000,))
        noise_frac = float((abar[ts] < 1e-3).float().mean())
        # wall-clock per SAC batch of 256 states (both nets), median of repeats
        reps = 20 if est["K"] <= 64 else 5
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            estimate(batch)
            times.append(time.perf_counter() - t0)
        rows.append({"estimator": label, "schedule": sch_name, **est, "t_min": t_min, "t_max": t_max, "auc": auc,
                     "reliability": reliability, "noise_frac": noise_frac, "rows_per_batch256": 256 * est["K"],
                     "ms_per_batch256": 1000 * float(np.median(times))})
        print(f"{label:52s} auc {auc:.3f}  reliability {reliability:.3f}  noise {noise_frac:.2f}  "
              f"rows {256 * est['K']:7d}  {rows[-1]['ms_per_batch256']:8.2f} ms", flush=True)
    return {"expert_states": len(x_exp), "learner_states": len(x_lrn), "expert_steps": args.expert_steps,
            "learner_steps": args.learner_steps, "rows": rows}


RUN_CONFIGS = {
    "official_T5000_grid_K500": dict(T=5000, K=500, timesteps="grid", min_abar=0.0, min_sigma=0.0),
    "T1000_K4_sigma0": dict(K=4, min_sigma=0.0),
    "T1000_K1": dict(K=1),
    "T1000_K4 (default)": dict(K=4),
    "T1000_K16": dict(K=16),
    "cosine_T1000_K4": dict(schedule="cosine", K=4),
    "T1000_K4_state_action": dict(K=4, variant="state_action"),
}


def part_b(args):
    from smiling_ros.config import load_config
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.methods.smiling.trainer import run

    cfg0 = load_config(REPO / "config/arm_reach.yaml")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dpath = work / "demos"
    if not dpath.exists():
        from smiling_ros.data.evaluation import resolve_policy, run_episodes
        from smiling_ros.envs import make_env

        env = make_env(ARM)
        eps = run_episodes(resolve_policy("scripted", env, seed=123), env, 10, seed=777, record=True)
        Dataset.from_episodes([(e["obs"], e["act"]) for e in eps],
                              {"task": ARM, "expert_return": float(np.mean([e["return"] for e in eps]))}).save(dpath)
    ds = Dataset.load(dpath)
    out = {}
    for name, over in RUN_CONFIGS.items():
        if args.only and name not in args.only:
            continue
        res = []
        for seed in args.seeds:
            cfg = load_config(REPO / "config/arm_reach.yaml")
            cfg.smiling = {**cfg0.smiling, **over, "total_steps": args.steps, "eval_every": max(1000, args.steps // 4),
                           "eval_episodes": 10, "checkpoint_every": 10**7}
            d = work / f"{name.split()[0]}_s{seed}"
            if not (d / "summary.json").exists():
                run("smiling", cfg, ds, d, total_steps=args.steps, seed=seed, resume=(d / "state.safetensors").exists())
            s = json.loads((d / "summary.json").read_text())
            res.append({"seed": seed, "normalized_return": float(s["final_eval"]["normalized_return"]),
                        "train_ms_per_step": 1000 * s["wall_clock"]["train_s_per_step"],
                        "reward_ms_per_step": 1000 * s["wall_clock"]["reward_s"] / s["steps"],
                        "rows_per_update": s.get("score_rows_per_update")})
        out[name] = {"per_seed": res, "normalized_return": float(np.mean([r["normalized_return"] for r in res])),
                     "train_ms_per_step": float(np.median([r["train_ms_per_step"] for r in res]))}
        print(f"{name:28s} normalised return {out[name]['normalized_return']:.3f}   "
              f"{out[name]['train_ms_per_step']:.1f} ms/env step", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expert-steps", type=int, default=3000)
    ap.add_argument("--learner-steps", type=int, default=300)
    ap.add_argument("--returns", action="store_true", help="also run part B (SMILING runs per estimator)")
    ap.add_argument("--only", nargs="*", default=None, help="part B configurations to run")
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--work", default="/tmp/smiling_bench/ablation")
    ap.add_argument("--skip-a", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = HERE / "ablation.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc["machine"] = f"{os.cpu_count()} CPU cores (shared), torch threads 1, load avg {os.getloadavg()[0]:.1f}"
    if not args.skip_a:
        doc["signal"] = part_a(args)
        doc["signal_command"] = "python bench/smiling/ablation.py " + " ".join(sys.argv[1:])
    if args.returns:
        doc["returns"] = {**doc.get("returns", {}), **part_b(args)}
        doc["returns_steps"] = args.steps
        doc["returns_command"] = "python bench/smiling/ablation.py " + " ".join(sys.argv[1:])
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
