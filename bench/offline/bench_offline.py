"""Offline benchmarks on one task, all from the same demonstrations (reduced budgets for a 2-core CPU):

1. DBC vs BC: success rate / return in MuJoCo, per seed and mean (same demos, same policy net, same
   steps; BC = DBC with lambda = 0).
2. Offline learner (TD3+BC) on the demos alone vs with DyDiff rollouts (60% real / 40% synthetic).
3. World-model drift against MuJoCo: from held-out expert states, replaying the expert's recorded
   actions open loop, RMS state error (in data-std units) along the horizon for the single-step
   ensemble (mean / random member), the window model alone, DyDiff (ensemble + K refinements), and
   the world-model env over a whole episode (ensemble steps + window correction every H-1 steps).

Usage:
  nice python bench/offline/bench_offline.py --task arm    [--seeds 3] [--out bench/offline/results]
  nice python bench/offline/bench_offline.py --task hopper --expert bench/offline/out/hopper_sac.zip
  # DBC vs BC only, several demo counts and lambdas, demos from `smiling-ros rollout`:
  nice python bench/offline/bench_offline.py --task hopper --dataset DIR --demos 1,2 --lambda-dm 1,10 \
      --skip offline,drift
Writes OUT/<task>.json, OUT/<task>_drift.png and prints the figures.

Evaluation: every policy (and the references: a uniform-random policy and the expert) runs the same
MuJoCo episodes (reset seeds 1_000_000 + i), so the comparisons are paired; normalised return is
(R - R_random) / (R_expert - R_random). DBC and BC with the same seed start from the same policy
weights and see the same batches (see train_dbc), and the DBC runs of one seed share one stage-1 model.
On the arm, the side on which each episode passed the post is recorded ('stuck': it never got past it,
the failure of an action averaged between the two modes).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "disable")


def expert_and_env(task: str, expert_path: str | None):
    import gymnasium as gym

    from smiling_ros.envs import ARM_REACH, make_env, scripted_expert

    if task == "arm":
        env = make_env(ARM_REACH)
        ex = scripted_expert(env, seed=0)
        return ARM_REACH, env, ex.act, ex.reset, "config/arm_reach.yaml"
    env = gym.make("Hopper-v5")
    if expert_path and expert_path.endswith(".zip"):
        from stable_baselines3 import SAC

        model = SAC.load(expert_path, device="cpu")
        act = lambda o: model.predict(o, deterministic=True)[0]  # noqa: E731
    else:
        from smiling_ros.learn.policy import load_policy

        pol = load_policy(expert_path, device="cpu")
        act = pol.act
    return "Hopper-v5", env, act, None, "config/hopper.yaml"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=["arm", "hopper"], required=True)
    p.add_argument("--expert", default=None, help="hopper expert: SB3 .zip or mlp_policy checkpoint")
    p.add_argument("--demos", default=None,
                   help="demo episodes, or a comma list for DBC vs BC (the first N episodes each; the other "
                        "parts use the largest); default arm 20, hopper 10")
    p.add_argument("--dataset", default=None,
                   help="demos from a dataset directory (e.g. `smiling-ros rollout` output) instead of rolling "
                        "the expert out here")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--eval-episodes", type=int, default=None)
    p.add_argument("--dbc-steps", type=int, default=3000)
    p.add_argument("--dm-steps", type=int, default=3000)
    p.add_argument("--lambda-dm", default=None, help="DBC lambda, or a comma list (default: the config's)")
    p.add_argument("--state-noise", default=None,
                   help="DBC dbc.state_noise, or a comma list (each with every lambda; default: the config's)")
    p.add_argument("--wm-steps", type=int, default=4000)
    p.add_argument("--td3-steps", type=int, default=8000)
    p.add_argument("--td3-seeds", type=int, default=2)
    p.add_argument("--skip", default="", help="comma list of parts to skip: dbc,offline,drift")
    p.add_argument("--out", default="bench/offline/results")
    a = p.parse_args()
    torch.set_num_threads(1)

    from smiling_ros.config import load_config
    from smiling_ros.envs import scripted_expert
    from smiling_ros.envs.experts import passing_side
    from smiling_ros.data.evaluation import RandomPolicy, normalized_return, run_episodes
    from smiling_ros.learn.common import collect_dataset
    from smiling_ros.methods.dbc.train import DBCConfig, train_dbc
    from smiling_ros.methods.dydiff.train import DyDiffConfig, train_offline, train_world_model, windows
    from smiling_ros.methods.dydiff.world_model_env import WorldModelEnv

    t_start = time.time()
    skip = set(a.skip.split(",")) - {""}
    task_id, env, ex_act, ex_reset, cfg_path = expert_and_env(a.task, a.expert)
    cfg = load_config(cfg_path)
    demo_counts = [int(x) for x in a.demos.split(",")] if a.demos else [20 if a.task == "arm" else 10]
    n_demos = max(demo_counts)
    n_eval = a.eval_episodes or (20 if a.task == "arm" else 10)
    if a.dataset:
        from smiling_ros.data.dataset import Dataset

        demos = Dataset.load(a.dataset)
        if demos.meta.get("task") not in (None, task_id):
            raise SystemExit(f"{a.dataset}: demos of task {demos.meta.get('task')}, not {task_id}")
        if len(list(demos.episodes())) < n_demos:
            raise SystemExit(f"{a.dataset}: fewer than {n_demos} episodes")
        ep_ret = [float(r) for r in demos.meta.get("returns") or []]
        demos = demos.subset(n_demos)
    else:
        demos = collect_dataset(env, ex_act, n_demos, seed=0, task=task_id, on_reset=ex_reset)
        ep_ret = [float(demos.reward[s].sum()) for s in demos.episode_slices()]
    if not {"drift", "offline"} <= skip and demos.reward is None:
        raise SystemExit("the world-model parts need demos with rewards (omit --dataset)")
    held = None if "drift" in skip else collect_dataset(env, ex_act, 5, seed=50_000, task=task_id, on_reset=ex_reset)
    low, high = env.action_space.low, env.action_space.high
    res = {
        "task": task_id, "machine": "2-core CPU shared with other jobs (torch 1 thread)",
        "command": "python " + " ".join(sys.argv),
        "demos": {"episodes": n_demos, "transitions": int(len(demos.obs)), "source": a.dataset or "collect_dataset",
                  "expert_return": float(np.mean(ep_ret[:n_demos])) if ep_ret else None,
                  "expert_success": None if demos.success is None else float(np.mean(demos.success))},
        "budgets": {k: getattr(a, k) for k in ("dbc_steps", "dm_steps", "wm_steps", "td3_steps", "seeds", "td3_seeds")},
    }
    res["budgets"]["eval_episodes"] = n_eval
    print(f"[{task_id}] demos: {n_demos} episodes, {len(demos.obs)} steps, expert return "
          f"{res['demos']['expert_return']}", flush=True)

    def env_fn():
        if a.task == "arm":
            from smiling_ros.envs import ARM_REACH, make_env

            return make_env(ARM_REACH)
        import gymnasium as gym

        return gym.make("Hopper-v5")

    eval_env = env_fn()
    refs: dict = {}

    def score(policy):
        """The same n_eval MuJoCo episodes for every policy (paired comparison)."""
        eps = run_episodes(policy, eval_env, n_eval, seed=1_000_000, record=a.task == "arm")
        rets = [e["return"] for e in eps]
        succ = [e["success"] for e in eps]
        r = {"mean_return": float(np.mean(rets)), "std_return": float(np.std(rets)),
             "success_rate": None if None in succ else float(np.mean(succ))}
        if refs:
            r["normalized_return"] = normalized_return(r["mean_return"], refs)
        if a.task == "arm":
            sides = [passing_side(e["obs"]) for e in eps]
            r["sides"] = {"left": sides.count("left"), "right": sides.count("right"), "stuck": sides.count(None)}
        return r

    refs["random"] = score(RandomPolicy(eval_env.action_space, 0))["mean_return"]
    ex_pol = scripted_expert(eval_env, seed=0) if a.task == "arm" else _FnPolicy(ex_act)
    ex_score = score(ex_pol)
    refs["expert"] = ex_score["mean_return"]
    res["references"] = {"random": refs["random"], "expert": refs["expert"], "expert_eval": ex_score,
                         "episodes": n_eval, "reset_seeds": f"1000000..{1_000_000 + n_eval - 1}"}
    print(f"[{task_id}] references on the eval episodes: random {refs['random']:.1f}, expert {refs['expert']:.1f}",
          flush=True)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # ------------------------------------------------------------------ 1. DBC vs BC
    if "dbc" not in skip:
        dcfg = dataclasses.replace(cfg.section(DBCConfig, "dbc"), steps=a.dbc_steps, dm_steps=a.dm_steps)
        lambdas = [float(x) for x in a.lambda_dm.split(",")] if a.lambda_dm else [dcfg.lambda_dm]
        noises = [float(x) for x in a.state_noise.split(",")] if a.state_noise else [dcfg.state_noise]
        runs = []
        for n in demo_counts:
            d = demos.subset(n)
            info = {"demos": n, "transitions": int(len(d.obs)),
                    "expert_return": float(np.mean(ep_ret[:n])) if ep_ret else None}
            if a.task == "arm":
                sides = [passing_side(o) for o, _ in d.episodes()]
                info["demo_sides"] = {"left": sides.count("left"), "right": sides.count("right")}
            print(f"[{task_id}] {n} demos: {info}", flush=True)
            rows = {("bc", 0.0, 0.0): []} | {("dbc", lam, sn): [] for lam in lambdas for sn in noises}
            for seed in range(a.seeds):
                dm = None  # one stage-1 model per (demos, seed), shared by the lambdas
                for (name, lam, sn), rs in rows.items():
                    r = train_dbc(d, dataclasses.replace(dcfg, lambda_dm=lam, state_noise=sn), low, high, seed=seed,
                                  dm=dm, progress=False)
                    if r.dm is not None:
                        dm = r.dm
                    sc = score(r.policy)
                    sc.update(seed=seed, train_wall_s=r.wall_s, final_losses=r.history[-1] if r.history else None)
                    rs.append(sc)
                    label = "BC" if name == "bc" else f"DBC l={lam:g}" + (f" noise={sn:g}" if sn else "")
                    print(f"[{task_id}] {n} demos, {label}, seed {seed}: return {sc['mean_return']:.1f}, "
                          f"normalised {sc['normalized_return']:.3f}"
                          + (f", success {sc['success_rate']:.2f}" if sc["success_rate"] is not None else "")
                          + (f", sides {sc['sides']}" if "sides" in sc else "") + f" ({r.wall_s:.0f} s)", flush=True)
            for (name, lam, sn), rs in rows.items():
                runs.append({**info, "method": name, "lambda_dm": lam, "state_noise": sn, **_mean(rs), "per_seed": rs})
                m = runs[-1]
                print(f"[{task_id}] {n} demos {name} lambda {lam:g} noise {sn:g}: normalised {m['mean_normalized_return']:.3f}"
                      + (f", success {m['mean_success']:.2f}" if m["mean_success"] is not None else ""), flush=True)
            res["dbc_vs_bc"] = {"T": dcfg.T, "dm_steps": dcfg.dm_steps, "steps": dcfg.steps,
                                "normalize_dm": dcfg.normalize_dm, "runs": runs}
            _save(out, a.task, res)
    if {"drift", "offline"} <= skip:
        res["total_wall_s"] = time.time() - t_start
        res["cpu_s"] = _cpu_s()
        _save(out, a.task, res)
        print(f"[{task_id}] done in {res['total_wall_s']:.0f} s wall, {res['cpu_s']:.0f} s CPU", flush=True)
        return
    # ------------------------------------------------------------------ world model
    wcfg = cfg.section(DyDiffConfig, "dydiff")
    wcfg = dataclasses.replace(wcfg, steps=a.wm_steps, ensemble_steps=a.wm_steps, reward_steps=min(2000, a.wm_steps),
                               rollout_every=1000, td3bc=dataclasses.replace(wcfg.td3bc, steps=a.td3_steps))
    t0 = time.time()
    wm = train_world_model(demos, wcfg, low, high, seed=0, progress=False, max_episode_steps=cfg.task.max_episode_steps)
    res["world_model"] = {"train_wall_s": time.time() - t0, "horizon": wm.H, "T": wcfg.T, "steps": a.wm_steps,
                          "reward": wm.meta["reward_kind"], "termination_model": wm.termination is not None}
    print(f"[{task_id}] world model trained in {time.time() - t0:.0f} s", flush=True)
    art = Path("bench/offline/out")
    demos.save(art / f"{a.task}_demos")
    wm.save(art / f"{a.task}_wm.safetensors", {"config": cfg.to_dict()})
    # ------------------------------------------------------------------ 3. drift along the horizon
    if "drift" not in skip:
        S, A = windows(held, wm.H)
        idx = np.random.default_rng(0).choice(len(S), min(256, len(S)), replace=False)
        S, A = torch.as_tensor(S[idx]), torch.as_tensor(A[idx])
        g = torch.Generator().manual_seed(0)
        std = torch.as_tensor(wm.obs_norm.std)

        def err(X):
            return (((X - S) / std) ** 2).mean(-1).sqrt().mean(0).tolist()

        drift = {
            "ensemble_mean": err(wm.ensemble_rollout(S[:, 0], actions=A, gen=g, member="mean")[0]),
            "ensemble_random_member": err(wm.ensemble_rollout(S[:, 0], actions=A, gen=g, member="random")[0]),
            "window_model": err(wm.sample_window(S[:, 0], A, g)),
            "dydiff_K2": err(wm.rollout(S[:, 0], actions=A, gen=g)["states"]),
        }
        # whole episodes in the world-model env (ensemble mean + window correction every H-1 steps)
        long = {"env_ensemble_only": [], "env_with_window_correction": []}
        for refine, key in ((False, "env_ensemble_only"), (True, "env_with_window_correction")):
            errs = []
            for k, sl in enumerate(held.episode_slices()):
                obs, act = held.obs[sl], held.act[sl]
                e = WorldModelEnv(wm, horizon=len(obs), refine=refine)
                e.reset(seed=k)
                e._s, e._anchor = obs[0].copy(), obs[0].copy()
                traj = [obs[0]]
                for i in range(len(obs) - 1):
                    o2, *_ = e.step(act[i])
                    traj.append(o2)
                traj = np.asarray(traj)
                errs.append(np.sqrt((((traj - obs) / wm.obs_norm.std) ** 2).mean(-1)))
            L = min(len(x) for x in errs)
            long[key] = np.mean([x[:L] for x in errs], 0).tolist()
        res["drift"] = {"units": "RMS state error / data std, mean over windows", "window": drift, "episode": long,
                        "held_out_windows": int(len(S))}
        _plot_drift(out / f"{a.task}_drift.png", task_id, drift, long, wm.H)
        h = wm.H - 1
        print(f"[{task_id}] drift at step {h}: " + ", ".join(f"{k} {v[h]:.3f}" for k, v in drift.items()), flush=True)
        for k, v in long.items():
            print(f"[{task_id}] {k}: error at steps 10/50/{len(v) - 1}: "
                  + "/".join(f"{v[min(i, len(v) - 1)]:.3f}" for i in (10, 50, len(v) - 1)), flush=True)
        _save(out, a.task, res)
    # ------------------------------------------------------------------ 2. offline learner +- DyDiff
    if "offline" not in skip:
        no_halt = copy.copy(wm)  # the ablation: rollouts not cut where the ensemble disagrees
        no_halt.halt_threshold = None
        learners = {"td3bc": None, "td3bc_dydiff": wm, "td3bc_dydiff_no_halt": no_halt}
        rows = {name: [] for name in learners}
        for seed in range(a.td3_seeds):
            for name, w in learners.items():
                t0 = time.time()
                agent = train_offline(demos, wcfg, low, high, world_model=w, seed=seed, progress=False,
                                      meta={"max_episode_steps": cfg.task.max_episode_steps})
                s = score(agent.policy())
                s.update(seed=seed, train_wall_s=time.time() - t0)
                rows[name].append(s)
                print(f"[{task_id}] {name} seed {seed}: return {s['mean_return']:.1f}"
                      + (f", success {s['success_rate']:.2f}" if s["success_rate"] is not None else "")
                      + f" ({s['train_wall_s']:.0f} s)", flush=True)
        res["offline"] = {name: {"mean_return": float(np.mean([r["mean_return"] for r in rs])),
                                 "mean_success": None if rs[0]["success_rate"] is None else
                                 float(np.mean([r["success_rate"] for r in rs])), "per_seed": rs}
                          for name, rs in rows.items()}
        res["offline"]["config"] = {"real_fraction": wcfg.real_fraction, "keep_fraction": wcfg.keep_fraction,
                                    "K": wcfg.refinements, "H": wcfg.horizon, "steps": a.td3_steps,
                                    "halt_threshold": wm.halt_threshold}
    res["total_wall_s"] = time.time() - t_start
    res["cpu_s"] = _cpu_s()
    _save(out, a.task, res)
    print(f"[{task_id}] done in {res['total_wall_s']:.0f} s -> {out / (a.task + '.json')}", flush=True)


class _FnPolicy:
    """An act(obs) function as a Policy (reset does nothing)."""

    def __init__(self, act):
        self.act = act

    def reset(self, obs=None) -> None:
        pass


def _mean(rs: list[dict]) -> dict:
    """Means over seeds of the per-seed scores."""
    m = {"mean_return": float(np.mean([r["mean_return"] for r in rs])),
         "mean_normalized_return": float(np.mean([r["normalized_return"] for r in rs])),
         "mean_success": None if rs[0]["success_rate"] is None else float(np.mean([r["success_rate"] for r in rs]))}
    if "sides" in rs[0]:
        m["mean_stuck"] = float(np.mean([r["sides"]["stuck"] for r in rs]))
    return m


def _cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _save(out: Path, task: str, res: dict) -> None:
    from smiling_ros.learn.checkpoint import atomic_write_text

    atomic_write_text(out / f"{task}.json", json.dumps(res, indent=1))


def _plot_drift(path: Path, task: str, drift: dict, long: dict, H: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, v in drift.items():
        ax[0].plot(range(len(v)), v, label=k)
    ax[0].set(title=f"{task}: open-loop window (H={H})", xlabel="step", ylabel="RMS error / data std")
    ax[0].legend(fontsize=7)
    for k, v in long.items():
        ax[1].plot(range(len(v)), v, label=k)
    for x in range(H - 1, len(next(iter(long.values()))), H - 1):
        ax[1].axvline(x, color="gray", lw=0.5, alpha=0.4)
    ax[1].set(title=f"{task}: world-model env, whole episode", xlabel="step", yscale="log")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
