"""SMILING trained in a DyDiff world model vs SMILING trained in MuJoCo, on the arm task, from the same
scripted demonstrations; every policy is scored by its true return in MuJoCo.

Arms, each over ``--seeds``:
  mujoco             train-smiling in the simulator (the reference);
  world_model        train-smiling --world-model with the defaults: the model halts where its ensemble
                     disagrees more than on any recorded transition (dydiff.halt_disagreement 1),
                     smiling.absorbing off;
  no_halt            the same world model with the halt removed;
  halt_absorbing     the defaults plus smiling.absorbing true (halts and leaving the data's range are
                     valued as an absorbing state);
  no_halt_absorbing  no halt, smiling.absorbing true.

Afterwards `smiling-ros eval` scores every policy, a random policy and the scripted expert on the same
MuJoCo episodes, and each world-model policy's behaviour is described in MuJoCo and in the world-model env
(passing side of the post, episodes whose fingertip entered the post, episodes the model halted).

  python bench/offline/smiling_wm.py [--seeds 0 1 2] [--steps 10000] [--jobs 2]
      -> bench/offline/results/smiling_wm.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config/arm_reach.yaml"


def sh(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc != 0:
        sys.exit(f"{' '.join(cmd[:3])} failed (exit {rc}); see {log}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=10000, help="SMILING env steps per run")
    ap.add_argument("--demos", type=int, default=20)
    ap.add_argument("--wm-steps", type=int, default=4000, help="window-model and ensemble steps")
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--arms", nargs="+", default=["mujoco", "world_model", "no_halt", "halt_absorbing",
                                                   "no_halt_absorbing"])
    ap.add_argument("--work", default=str(ROOT / "bench/offline/out/smiling_wm"))
    ap.add_argument("--out", default=str(ROOT / "bench/offline/results/smiling_wm.json"))
    args = ap.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    from smiling_ros.envs import ARM_REACH, make_env, scripted_expert
    from smiling_ros.learn.common import collect_dataset
    from smiling_ros.methods.dydiff.train import WorldModel

    demos, wm = work / "demos", work / "wm.safetensors"
    if not (demos / "data.safetensors").exists():
        env = make_env(ARM_REACH)
        ex = scripted_expert(env, seed=0)
        collect_dataset(env, ex.act, args.demos, seed=0, task=ARM_REACH, on_reset=ex.reset).save(demos)
    if not wm.exists():
        sh(["smiling-ros", "train-dydiff", "--config", str(CONFIG), "--dataset", str(demos), "--out", str(wm),
            "--steps", str(args.wm_steps), "--ensemble-steps", str(args.wm_steps), "--quiet"], work / "wm.log")
    # the ablation: the same model without its halt, and a config that turns the absorbing value off
    model = WorldModel.load(wm)
    threshold = model.halt_threshold
    model.halt_threshold = None
    wm_nohalt = model.save(work / "wm_nohalt.safetensors")
    configs = {None: CONFIG}
    for absorbing in (False, True):
        cfg = yaml.safe_load(CONFIG.read_text())
        cfg.setdefault("smiling", {})["absorbing"] = absorbing
        configs[absorbing] = work / f"arm_reach_absorbing_{str(absorbing).lower()}.yaml"
        configs[absorbing].write_text(yaml.safe_dump(cfg))
    arms = {  # name: (world model or None for MuJoCo, smiling.absorbing or None for the config's)
        "mujoco": (None, None), "world_model": (wm, None), "no_halt": (wm_nohalt, False),
        "halt_absorbing": (wm, True), "no_halt_absorbing": (wm_nohalt, True)}

    def train(arm: str, seed: int) -> Path:
        run = work / f"{arm}_s{seed}"
        if (run / "summary.json").exists():
            return run
        model, absorbing = arms[arm]
        extra = ["--world-model", str(model)] if model else []
        conf = configs[absorbing]
        resume = ["--resume"] if (run / "state.safetensors").exists() else []
        sh(["smiling-ros", "train-smiling", "--config", str(conf), "--dataset", str(demos), "--out", str(run),
            "--steps", str(args.steps), "--seed", str(seed), "--no-progress", "--device", "cpu", *extra, *resume],
           work / f"{arm}_s{seed}.log")
        return run

    jobs = [(a, s) for s in args.seeds for a in args.arms]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = dict(zip(jobs, pool.map(lambda j: train(*j), jobs)))

    from smiling_ros.config import load_config
    from smiling_ros.envs import arm_reach as ar
    from smiling_ros.envs.experts import passing_side
    from smiling_ros.data.evaluation import evaluate, run_episodes
    from smiling_ros.methods.dydiff.world_model_env import make_world_model_env
    from smiling_ros.learn.policy import load_policy

    conf = load_config(str(CONFIG))
    n, seed0 = args.eval_episodes, 5_000_000  # the same MuJoCo episodes for every policy
    sim = lambda: make_env(ARM_REACH)  # noqa: E731

    def in_post(tip):  # fingertip centre inside the post's box widened by the fingertip radius
        return (np.abs(tip[:, 0] - ar.POST_XY[0]) < ar.POST_HALF[0] + ar.TIP_RADIUS) & \
               (np.abs(tip[:, 1] - ar.POST_XY[1]) < ar.POST_HALF[1] + ar.TIP_RADIUS)

    def behaviour(pol, env) -> dict:
        eps = run_episodes(pol, env, 10, seed=seed0, record=True)
        sides = [passing_side(e["obs"]) or "stuck" for e in eps]
        return {"sides": {s: sides.count(s) for s in ("left", "right", "stuck")},
                "post_contact_episodes": int(sum(bool(in_post(e["obs"][:, 4:6]).any()) for e in eps)),
                "final_distance_m": float(np.mean([np.linalg.norm(e["obs"][-1, 4:6] - e["obs"][-1, 6:8]) for e in eps])),
                "mean_length": float(np.mean([e["length"] for e in eps]))}

    keep = ("mean_return", "success_rate", "normalized_return")
    res = {"task": ARM_REACH, "demos": args.demos, "env_steps": args.steps, "seeds": args.seeds,
           "world_model": {"steps": args.wm_steps, "halt_threshold": threshold},
           "machine": "2-core x86-64 CPU, no GPU, torch 1 thread", "eval_episodes": n,
           "eval_reset_seeds": f"{seed0}..{seed0 + n - 1}",
           "command": "python bench/offline/smiling_wm.py " + " ".join(sys.argv[1:]), "arms": {}}
    for name in ("random", "scripted"):
        ev = evaluate(name, sim, n, seed=seed0)
        res[name] = {k: ev[k] for k in keep if k != "normalized_return"}
    refs = {"random": res["random"]["mean_return"], "expert": res["scripted"]["mean_return"]}
    res["references"] = refs
    for arm in args.arms:
        rows = []
        for s in args.seeds:
            run = runs[(arm, s)]
            ev = evaluate(str(run / "policy.safetensors"), sim, n, seed=seed0, references=refs)
            summ = json.loads((run / "summary.json").read_text())
            row = {"seed": s, **{k: ev[k] for k in keep}, "absorbing": summ.get("absorbing"),
                   "train_s": summ["wall_clock"]["train_s"]}
            pol = load_policy(run / "policy.safetensors", device="cpu")
            row["behaviour_mujoco"] = behaviour(pol, sim())
            if arm != "mujoco":
                row["behaviour_world_model"] = behaviour(pol, make_world_model_env(wm_nohalt, conf))
            rows.append(row)
            print(arm, s, {k: round(float(row[k]), 3) for k in keep}, json.dumps(row["behaviour_mujoco"]))
        agg = {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
               for k in keep}
        res["arms"][arm] = {"summary": agg, "runs": rows}
        print(arm, {k: f"{v['mean']:.3f} ± {v['std']:.3f}" for k, v in agg.items()})
    res["total_wall_s"] = time.time() - t0
    Path(args.out).write_text(json.dumps(res, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
