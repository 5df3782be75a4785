"""Train a modest SB3-SAC expert on Hopper-v5 for the offline benchmarks (reduced budget, 2-core CPU).

Usage: python bench/offline/hopper_expert.py --steps 40000 --out bench/offline/out/hopper_sac
Writes OUT.zip (SB3's own format; a benchmark artefact only, never loaded by users' tools) and OUT.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40000)
    p.add_argument("--out", default="bench/offline/out/hopper_sac")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    from stable_baselines3 import SAC

    env = gym.make("Hopper-v5")
    model = SAC("MlpPolicy", env, seed=a.seed, verbose=0, learning_starts=5000)
    t0 = time.time()
    model.learn(total_timesteps=a.steps, progress_bar=False)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    rets = []
    ev = gym.make("Hopper-v5")
    for ep in range(5):
        o, _ = ev.reset(seed=1000 + ep)
        done, R = False, 0.0
        while not done:
            act, _ = model.predict(o, deterministic=True)
            o, r, term, trunc, _ = ev.step(act)
            R += r
            done = term or trunc
        rets.append(R)
    info = {"steps": a.steps, "wall_s": time.time() - t0, "eval_returns": rets, "mean": float(np.mean(rets))}
    out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
