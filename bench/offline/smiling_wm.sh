#!/usr/bin/env bash
# SMILING in the DyDiff world model vs SMILING in MuJoCo, on the arm task from the same 20 scripted demos.
# Both runs are evaluated in MuJoCo (the trainer's periodic evaluation uses the simulator whenever the
# config names one); afterwards `smiling-ros eval` re-scores both policies, a random policy and the scripted
# expert on the same 20 MuJoCo episodes. Reduced budget for a 2-core CPU: STEPS env steps each (default 10000).
# Usage: nice -n 10 bash bench/offline/smiling_wm.sh   -> bench/offline/results/smiling_wm.json
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-10000}
O=bench/offline/out
R=bench/offline/results
mkdir -p $O $R
if [ -z "${REPORT_ONLY:-}" ]; then  # REPORT_ONLY=1: only re-score the runs already in bench/offline/out
rm -rf $O/smiling_arm_wm $O/smiling_arm_mujoco
python - <<'PY'
from smiling_ros.envs import ARM_REACH, make_env, scripted_expert
from smiling_ros.offline.common import collect_dataset
env = make_env(ARM_REACH); ex = scripted_expert(env, seed=0)
collect_dataset(env, ex.act, 20, seed=0, task=ARM_REACH, on_reset=ex.reset).save("bench/offline/out/arm_demos")
PY
smiling-ros train-dydiff --config config/arm_reach.yaml --dataset $O/arm_demos --out $O/arm_wm --steps 4000 --ensemble-steps 4000 --quiet
smiling-ros train-smiling --config config/arm_reach.yaml --dataset $O/arm_demos --out $O/smiling_arm_wm --world-model $O/arm_wm.safetensors --steps $STEPS --no-progress --device cpu > $O/smiling_arm_wm.log 2>&1 &
smiling-ros train-smiling --config config/arm_reach.yaml --dataset $O/arm_demos --out $O/smiling_arm_mujoco --steps $STEPS --no-progress --device cpu > $O/smiling_arm_mujoco.log 2>&1 &
wait
tail -n 2 $O/smiling_arm_wm.log $O/smiling_arm_mujoco.log
# the same 20 MuJoCo episodes (reset seeds 5_000_000..) for every policy
for p in smiling_arm_wm smiling_arm_mujoco; do
  smiling-ros eval --checkpoint $O/$p --episodes 20 --json > $O/eval_$p.json
done
smiling-ros eval --checkpoint random --config config/arm_reach.yaml --episodes 20 --json > $O/eval_random.json
smiling-ros eval --checkpoint scripted --config config/arm_reach.yaml --episodes 20 --json > $O/eval_scripted.json
fi
python - "$STEPS" <<'PY'
import csv, json, sys
from pathlib import Path
O, steps = Path("bench/offline/out"), int(sys.argv[1])
res = {"task": "smiling_ros/ArmReach-v0", "demos": 20, "env_steps": steps, "world_model": "train-dydiff 4000 + 4000 steps",
       "machine": "2-core CPU shared with other jobs", "command": "nice -n 10 bash bench/offline/smiling_wm.sh"}
keep = ("mean_return", "std_return", "success_rate", "normalized_return")
for name in ("smiling_arm_wm", "smiling_arm_mujoco", "random", "scripted"):
    ev = json.loads((O / f"eval_{name}.json").read_text())
    row = {k: ev[k] for k in keep}
    row["references"] = ev["references"]
    if name.startswith("smiling"):
        s = json.loads((O / name / "summary.json").read_text())
        row["trainer_final_eval"] = {k: s["final_eval"][k] for k in keep}
        row["train_s"] = s["wall_clock"]["train_s"]
        row["curve"] = [{k: r[k] for k in ("step", "mean_return", "success_rate", "normalized_return")}
                        for r in csv.DictReader(open(O / name / "eval.csv"))]
    res[name] = row
    print(name, {k: row[k] for k in keep})
# Where the two policies go, in MuJoCo and in the world-model env (10 episodes each, reset seeds 5_000_000..):
# passing side of the post ('stuck': never got past it), final fingertip-target distance, and how many
# world-model episodes moved the fingertip through the post (which the demos never touch).
import numpy as np
from smiling_ros.config import load_config
from smiling_ros.dataset import Dataset
from smiling_ros.envs import ARM_REACH, arm_reach as ar, make_env
from smiling_ros.envs.experts import passing_side
from smiling_ros.evaluation import run_episodes
from smiling_ros.offline.world_model_env import make_world_model_env
from smiling_ros.policy import load_policy

def in_post(tip):  # fingertip centre inside the post's box widened by the fingertip radius
    return (np.abs(tip[:, 0] - ar.POST_XY[0]) < ar.POST_HALF[0] + ar.TIP_RADIUS) & \
           (np.abs(tip[:, 1] - ar.POST_XY[1]) < ar.POST_HALF[1] + ar.TIP_RADIUS)

def where(pol, env):
    eps = run_episodes(pol, env, 10, seed=5_000_000, record=True)
    sides = [passing_side(e["obs"]) or "stuck" for e in eps]
    return {"sides": {s: sides.count(s) for s in ("left", "right", "stuck")},
            "final_distance_m": float(np.mean([np.linalg.norm(e["obs"][-1, 4:6] - e["obs"][-1, 6:8]) for e in eps])),
            "through_post_episodes": int(sum(bool(in_post(e["obs"][:, 4:6]).any()) for e in eps)),
            "return": float(np.mean([e["return"] for e in eps]))}

cfg = load_config("config/arm_reach.yaml")
res["demo_states_inside_post"] = int(in_post(Dataset.load(O / "arm_demos").obs[:, 4:6]).sum())
for name in ("smiling_arm_wm", "smiling_arm_mujoco"):
    pol = load_policy(O / name / "policy.safetensors", device="cpu")
    res[name]["behaviour"] = {"mujoco": where(pol, make_env(ARM_REACH)),
                              "world_model_env": where(pol, make_world_model_env(O / "arm_wm.safetensors", cfg))}
    print(name, json.dumps(res[name]["behaviour"]))
(Path("bench/offline/results") / "smiling_wm.json").write_text(json.dumps(res, indent=1))
PY
