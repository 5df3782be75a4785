#!/usr/bin/env bash
# SMILING in the DyDiff world model vs SMILING in MuJoCo, on the arm task from the same 20 scripted demos
# (reduced budget: 10k env steps each; both evaluated in MuJoCo). Usage: nice bash bench/offline/smiling_wm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
O=bench/offline/out
mkdir -p $O
python - <<'PY'
from smiling_ros.envs import ARM_REACH, make_env, scripted_expert
from smiling_ros.offline.common import collect_dataset
env = make_env(ARM_REACH); ex = scripted_expert(env, seed=0)
collect_dataset(env, ex.act, 20, seed=0, task=ARM_REACH, on_reset=ex.reset).save("bench/offline/out/arm_demos")
PY
smiling-ros train-dydiff --config config/arm_reach.yaml --dataset $O/arm_demos --out $O/arm_wm --steps 4000 --ensemble-steps 4000 --quiet
smiling-ros train-smiling --config config/arm_reach.yaml --dataset $O/arm_demos --out $O/smiling_arm_wm --world-model $O/arm_wm.safetensors --steps 10000 --no-progress --device cpu > $O/smiling_arm_wm.log 2>&1 &
smiling-ros train-smiling --config config/arm_reach.yaml --dataset $O/arm_demos --out $O/smiling_arm_mujoco --steps 10000 --no-progress --device cpu > $O/smiling_arm_mujoco.log 2>&1 &
wait
tail -n 2 $O/smiling_arm_wm.log $O/smiling_arm_mujoco.log
