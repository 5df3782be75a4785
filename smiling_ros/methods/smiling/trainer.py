"""The SMILING trainer: score players + DS-cost reward + stable-baselines3 SAC, over any Gymnasium env.

Python API (used by ``smiling-ros train-smiling`` and by the trainer node)::

    from smiling_ros.methods.smiling.trainer import train
    policy_path = train(cfg, dataset, out_dir, env_fn=None, total_steps=None, resume=False,
                        device="auto", callback=None, progress=True)

- ``cfg``: :class:`smiling_ros.config.Config`; options from its ``smiling`` section
  (:class:`~smiling_ros.methods.smiling.config.SmilingSection`), expert references from ``expert``.
- ``dataset``: :class:`smiling_ros.data.dataset.Dataset` of demonstrations (state-only is enough for
  ``variant='state'``; ``'state_action'`` needs actions).
- ``env_fn() -> gymnasium.Env``: the env SAC acts in (default ``make_env_from_config(cfg)``).
  It is called ``n_envs`` times for training (``smiling.n_envs``, default 1; the ``n_envs``
  argument overrides it): each copy in a Monitor, all in one SB3 DummyVecEnv, copy i seeded
  ``seed + i``. Every count (``total_steps``, log/eval/checkpoint/learner intervals,
  ``learning_starts``, the learner FIFO, the replay buffer size) is in env steps summed over the
  copies, a total is rounded up to a multiple of ``n_envs``, and SAC keeps one gradient step per
  env step (``gradient_steps / train_freq``). Periodic evaluation uses one env from
  ``eval_env_fn`` (default: ``env_fn``), created once per run. Set ``smiling.eval_episodes: 0``
  to skip evaluation (e.g. a real robot, which is also always a single env).
- ``callback(event: dict) -> bool | None``: called with ``{'step': int, 'metrics': {...}}`` at
  every log and evaluation (evaluation metrics are prefixed ``eval/``) and with
  ``{'step': int, 'checkpoint': str}`` whenever a new deployable policy is written. Returning
  ``False`` stops training cleanly: a checkpoint at the current step is written first.
- Returns ``out_dir / 'policy.safetensors'`` (an ``mlp_policy``: the SAC actor's mean).
- Extra keyword arguments: ``variant`` ('state' | 'state_action', overrides the config),
  ``eval_env_fn``, ``seed``, ``n_envs``.

Run directory::

    state.safetensors (+ .json)   full trainer state: SAC nets, temperature, optimisers, replay
                                  buffer, score nets (or discriminator), counters; for --resume
    policy.safetensors (+ .json)  deployable policy at the last checkpoint
    train.csv, eval.csv           logs (step-indexed); learning_curve.png; references.json
    summary.json                  final figures and wall-clock split

All files are written atomically. ``resume=True`` continues from ``state.safetensors`` to the
same ``total_steps`` as an uninterrupted run, with the run's ``n_envs`` (the replay buffer's
layout depends on it; asking for another is an error); log rows after the checkpoint are dropped.
The same loop runs the DAC baseline (:func:`smiling_ros.methods.smiling.dac.train_dac`) and plain SAC on
the env reward (``run('sac', ...)``, used by ``train-expert`` and the benchmark).
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from smiling_ros.data.evaluation import EVAL_COLUMNS
from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import Checkpoint, atomic_write_text, load_checkpoint, save_checkpoint
from smiling_ros.learn.logger import RunLogger, last_row
from smiling_ros.learn.plots import plot_learning_curve

EnvFn = Callable[[], Any]
Callback = Callable[[dict], Optional[bool]]

TRAIN_COLUMNS = ["step", "time_s", "episodes", "ep_return", "ep_length", "critic_loss", "actor_loss", "ent_coef",
                 "reward_raw_mean", "reward_raw_std", "learner_loss", "disc_loss", "disc_acc", "steps_per_s"]


REWARDS: dict[str, Optional[str]] = {
    "smiling": "smiling_ros.methods.smiling.score:SmilingReward",  # DS cost of the two score players
    "dac": "smiling_ros.methods.smiling.dac:DacReward",  # discriminator reward
    "sac": None,  # the env's own reward (train-expert)
}
"""The online loop's reward models: method -> ``"module:Class"`` constructed as ``Class(x_expert, opts,
device, seed)`` with ``setup/reward/absorbing_reward/update/state/load_state`` and ``metrics``; None: the
env's reward, no demonstrations."""


def reward_model_class(method: str) -> Any:
    """The reward model class registered for ``method`` (None for the env's reward)."""
    import importlib

    target = REWARDS[method]
    if target is None:
        return None
    mod, _, cls = target.partition(":")
    return getattr(importlib.import_module(mod), cls)


def default_env_fn(cfg) -> EnvFn:
    from smiling_ros.envs import make_env_from_config

    return lambda: make_env_from_config(cfg)


def train(cfg, dataset, out_dir, env_fn: Optional[EnvFn] = None, total_steps: Optional[int] = None,
          resume: bool = False, device: str = "auto", callback: Optional[Callback] = None, progress: bool = True,
          variant: Optional[str] = None, eval_env_fn: Optional[EnvFn] = None, seed: Optional[int] = None,
          n_envs: Optional[int] = None) -> Path:
    """SMILING (see the module docstring). Returns the deployable policy's path."""
    return run("smiling", cfg, dataset, out_dir, env_fn=env_fn, total_steps=total_steps, resume=resume,
               device=device, callback=callback, progress=progress, variant=variant, eval_env_fn=eval_env_fn,
               seed=seed, n_envs=n_envs)


def fit(cfg, dataset, *, out, env_fn: Optional[EnvFn] = None, callback: Optional[Callback] = None,
        method: str = "smiling", **options: Any):
    """The SB3-shaped entry: ``method`` ('smiling' | 'dac' | 'sac') on the online loop (:func:`run`, whose
    keyword ``options`` it takes) into the run directory ``out``; returns a
    :class:`~smiling_ros.learn.fit.TrainResult` naming the deployable policy."""
    from smiling_ros.learn.fit import TrainResult

    policy = run(method, cfg, dataset, out, env_fn=env_fn, callback=callback, **options)
    run_dir = Path(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    files = {"policy": policy, "state": run_dir / "state.safetensors", "log": run_dir / "train.csv",
             "eval": run_dir / "eval.csv"}
    return TrainResult(policy, files, summary)


# ---------------------------------------------------------------------------------- checks
def _space_dims(env) -> tuple[int, int]:
    from gymnasium import spaces

    if not isinstance(env.observation_space, spaces.Box) or not isinstance(env.action_space, spaces.Box):
        raise UserError("environment: SMILING/SAC need Box observation and action spaces")
    return int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))


def make_vec_env(envs: list):
    """An SB3 DummyVecEnv over ``envs`` (already built), each in a Monitor (episode return and
    length for the logs) unless it has one. The copies are stepped one after the other in this
    process: an in-process MuJoCo step costs tens of microseconds, less than SubprocVecEnv's
    inter-process round trip. SB3 seeds copy i with ``seed + i`` at its first reset."""
    from stable_baselines3.common.env_util import is_wrapped
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    shapes = {(e.observation_space.shape, e.action_space.shape) for e in envs}
    if len(shapes) > 1:
        raise UserError(f"environment: the {len(envs)} env copies disagree on their spaces ({sorted(shapes)})")
    wrapped = [e if is_wrapped(e, Monitor) else Monitor(e) for e in envs]
    return DummyVecEnv([_returns(e) for e in wrapped])


def _returns(env: Any) -> Callable[[], Any]:
    """An env factory returning ``env`` itself (SB3's VecEnvs take factories)."""
    return lambda: env


def round_to_envs(total: int, n_envs: int) -> int:
    """``total`` env steps rounded up to a multiple of ``n_envs`` (one vectorised step steps every copy)."""
    return -(-int(total) // n_envs) * n_envs


def check_dataset(dataset, obs_dim: int, act_dim: int, variant: str, min_states: int, task: str) -> None:
    """Wrong dimension, too few states, missing actions -> one-line UserError naming the dataset."""
    name = dataset.meta.get("path", "dataset")
    if dataset.obs_dim != obs_dim:
        raise UserError(f"{name}: demonstrations have {dataset.obs_dim}-dim observations but '{task}' has {obs_dim} "
                        f"(demos of another task?)")
    if len(dataset.obs) < min_states:
        raise UserError(f"{name}: only {len(dataset.obs)} demonstration states; need at least {min_states} "
                        f"(smiling.min_demo_states)")
    if variant == "state_action":
        dataset.require_actions("the state_action variant")
        if dataset.act_dim != act_dim:
            raise UserError(f"{name}: demonstrations have {dataset.act_dim}-dim actions but '{task}' has {act_dim}")
    dtask = dataset.meta.get("task")
    if dtask and task and dtask != task:
        raise UserError(f"{name}: recorded for task '{dtask}', not '{task}'")


def dataset_fingerprint(dataset) -> str:
    h = hashlib.sha1(np.ascontiguousarray(dataset.obs).tobytes())
    if dataset.act is not None:
        h.update(np.ascontiguousarray(dataset.act).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------- logs
def _plain(v: Any) -> Any:
    """numpy scalars -> Python numbers (for callbacks that publish or serialise metrics)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


# ---------------------------------------------------------------------------------- the loop
class _Timer:
    def __init__(self):
        self.total = 0.0

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.total += time.perf_counter() - self.t0


@dataclass
class RunSetup:
    """A run's resolved options: the config's ``smiling`` section with the caller's overrides, and for a
    resumed run what its checkpoint fixes (variant, seed, env copies, step budget)."""

    method: str
    reward_cls: Any  # the reward model class (REWARDS), None: the env's reward
    opts: Any  # SmilingSection
    sac: Any  # SacSection
    out: Path
    state_path: Path
    ck: Optional[Checkpoint]  # the state of a resumed run
    seed: int
    total: int
    n_envs: int
    device: torch.device
    env_fn: EnvFn
    task: str


def resolve_run(method: str, cfg, out_dir, env_fn: Optional[EnvFn] = None, total_steps: Optional[int] = None,
                resume: bool = False, device: str = "auto", variant: Optional[str] = None, seed: Optional[int] = None,
                sac_opts=None, loop_opts: Optional[dict] = None, n_envs: Optional[int] = None,
                overwrite: bool = False) -> RunSetup:
    """Check and resolve :func:`run`'s options (one-line errors for bad ones); nothing is written."""
    import dataclasses

    from smiling_ros.learn.device import select_device
    from smiling_ros.methods.smiling.config import smiling_section

    if method not in REWARDS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(REWARDS)})")
    reward_cls = reward_model_class(method)
    opts = smiling_section(cfg)
    if variant is not None:
        if variant not in ("state", "state_action"):
            raise UserError(f"--variant: 'state' or 'state_action', got '{variant}'")
        opts = dataclasses.replace(opts, variant=variant)
    if loop_opts:
        opts = dataclasses.replace(opts, **loop_opts)
    out = Path(out_dir)
    state_path = out / "state.safetensors"
    if state_path.exists() and not resume and not overwrite:
        raise UserError(f"{out}: already holds a training run (state.safetensors); pass --resume to continue it, "
                        f"--overwrite to start it again, or choose another --out")
    if resume and not state_path.exists():
        raise UserError(f"{out}: nothing to resume (no state.safetensors)")
    if n_envs is not None and (isinstance(n_envs, bool) or int(n_envs) != n_envs or n_envs < 1):
        raise UserError(f"n_envs: number of parallel simulator copies, must be an integer >= 1, got {n_envs}")
    ck = load_checkpoint(state_path) if resume else None
    if ck is not None:  # a resumed run keeps its variant, seed, env copies and step budget unless told otherwise
        from smiling_ros.methods.smiling.buffer import saved_n_envs

        ck_envs = saved_n_envs(ck.tensors, ck.meta.get("buffer") or {})
        if n_envs is not None and int(n_envs) != ck_envs:
            raise UserError(f"{state_path}: the run steps {ck_envs} env copies (smiling.n_envs) and its replay "
                            f"buffer is laid out for them; resume with n_envs {ck_envs}, not {n_envs}")
        n_envs = ck_envs
        if variant is None and ck.meta.get("variant"):
            opts = dataclasses.replace(opts, variant=ck.meta["variant"])
        if seed is None and ck.meta.get("seed") is not None:
            seed = int(ck.meta["seed"])
        if total_steps is None and ck.meta.get("total_steps"):
            total_steps = int(ck.meta["total_steps"])
    seed = int(seed if seed is not None else (opts.seed if opts.seed is not None else cfg.seed))
    total = int(total_steps if total_steps is not None else opts.total_steps)
    if total < 1:
        raise UserError(f"--steps: must be >= 1, got {total}")
    n_envs = int(n_envs if n_envs is not None else opts.n_envs)
    if total % n_envs:
        print(f"{method}: {total} env steps is not a multiple of n_envs={n_envs}; running "
              f"{round_to_envs(total, n_envs)}", file=sys.stderr)
        total = round_to_envs(total, n_envs)
    return RunSetup(method, reward_cls, opts, sac_opts or opts.sac, out, state_path, ck, seed, total, n_envs,
                    select_device(device), env_fn or default_env_fn(cfg), cfg.task.env or "robot")


class Relabel:
    """The imitation reward of a sampled batch, computed with the current reward model (never stored).

    With ``absorbing``, a transition into a true termination (``dones`` excludes time limits) also
    collects the value of an absorbing state that the expert never visits: the reward model's
    ``absorbing_reward`` (SMILING: the batch's lowest reward; DAC: 0, the limit of -log(1 - sigmoid(D))
    where D rejects) at every later step, gamma / (1 - gamma) * r_abs, folded into its reward because
    SAC's target does not bootstrap past termination. Without it a zero-mean imitation reward makes
    falling (Hopper) cost nothing."""

    def __init__(self, reward_model: Any, variant: str, absorb: bool, gamma: float, timer: "_Timer"):
        self.reward_model, self.variant, self.absorb, self.timer = reward_model, variant, absorb, timer
        self.k_abs = gamma / (1 - gamma) if absorb else 0.0

    def __call__(self, samples: Any) -> torch.Tensor:
        from smiling_ros.methods.smiling.buffer import sample_inputs

        with self.timer:
            r = self.reward_model.reward(sample_inputs(samples, self.variant))
            if self.absorb:
                r = r + samples.dones.view(-1).to(r.dtype) * self.k_abs * self.reward_model.absorbing_reward(r)
            return r


def run(method: str, cfg, dataset, out_dir, env_fn: Optional[EnvFn] = None, total_steps: Optional[int] = None,
        resume: bool = False, device: str = "auto", callback: Optional[Callback] = None, progress: bool = True,
        variant: Optional[str] = None, eval_env_fn: Optional[EnvFn] = None, seed: Optional[int] = None,
        sac_opts=None, loop_opts: Optional[dict] = None, n_envs: Optional[int] = None, overwrite: bool = False) -> Path:
    """One RL run on SMILING's loop. ``method``: a key of :data:`REWARDS` ('smiling' | 'dac' | 'sac': env
    reward, no dataset needed). ``sac_opts`` overrides ``smiling.sac`` (train-expert passes ``expert.sac``);
    ``loop_opts`` overrides other ``smiling`` keys (eval_every, checkpoint_every, ...);
    ``n_envs`` overrides ``smiling.n_envs``."""
    rs = resolve_run(method, cfg, out_dir, env_fn, total_steps, resume, device, variant, seed, sac_opts, loop_opts,
                     n_envs, overwrite)
    reward_cls, opts, sac_o, out, state_path, ck = rs.reward_cls, rs.opts, rs.sac, rs.out, rs.state_path, rs.ck
    seed, total, n_envs, dev, env_fn, task = rs.seed, rs.total, rs.n_envs, rs.device, rs.env_fn, rs.task

    torch.manual_seed(seed)
    np.random.seed(seed)
    envs: list = []
    eval_env = None
    try:
        for _ in range(n_envs):
            envs.append(env_fn())
        env = envs[0]
        obs_dim, act_dim = _space_dims(env)
        if reward_cls is not None:
            if dataset is None:
                raise UserError(f"{method}: a demonstration dataset is required")
            check_dataset(dataset, obs_dim, act_dim, opts.variant, opts.min_demo_states, task)
        out.mkdir(parents=True, exist_ok=True)

        from smiling_ros.methods.smiling.rl import build_sac, export_actor, load_sac_state, sac_state

        model = build_sac(make_vec_env(envs), sac_o, dev, seed)
        buffer = model.replay_buffer
        reward_model = None
        absorb = False
        t_reward, t_learner, t_eval, t_ckpt = _Timer(), _Timer(), _Timer(), _Timer()
        if reward_cls is not None:
            from smiling_ros.methods.smiling.score import expert_inputs

            low, high = env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)
            x_exp = expert_inputs(dataset.obs, dataset.act, opts.variant, low, high)
            reward_model = reward_cls(x_exp, opts, dev, seed)
            absorb = opts.absorbing and sac_o.gamma < 1
            buffer.relabel = Relabel(reward_model, opts.variant, absorb, sac_o.gamma, t_reward)

        base_meta = {
            "task": task, "method": method, "variant": opts.variant if reward_cls is not None else None,
            "obs_dim": obs_dim, "act_dim": act_dim, "seed": seed, "total_steps": total, "n_envs": n_envs,
            "dataset": None if dataset is None else {"path": dataset.meta.get("path"), "fingerprint":
                                                     dataset_fingerprint(dataset), "states": int(len(dataset.obs))},
            "config": cfg.to_dict(), "config_path": cfg.path,
        }
        t_setup0 = time.perf_counter()
        elapsed0 = 0.0
        if ck is not None:
            ck.require(f"{method}_run", obs_dim=obs_dim, act_dim=act_dim, task=task)
            if base_meta["dataset"] and ck.meta.get("dataset") and \
                    ck.meta["dataset"]["fingerprint"] != base_meta["dataset"]["fingerprint"]:
                raise UserError(f"{state_path}: was trained on other demonstrations ({ck.meta['dataset'].get('path')}); "
                                f"resume with the same --dataset")
            if ck.meta.get("variant") != base_meta["variant"]:
                raise UserError(f"{state_path}: run uses variant '{ck.meta.get('variant')}', not '{base_meta['variant']}'")
            try:
                load_sac_state(model, ck.tensors, ck.meta["sac"])
                buffer.load_state_tensors(ck.tensors, ck.meta["buffer"])
                if reward_model is not None:
                    reward_model.load_state(ck.tensors, ck.meta["reward"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise UserError(f"{state_path}: inconsistent trainer state ({str(exc).splitlines()[0]})") from None
            elapsed0 = float(ck.meta.get("elapsed_s", 0.0))
        elif reward_model is not None:
            reward_model.setup(progress=progress)
        resume_step = model.num_timesteps if ck is not None else None  # a resumed run drops later rows
        train_log = RunLogger(out / "train.csv", TRAIN_COLUMNS, resume_step=resume_step)
        eval_log = RunLogger(out / "eval.csv", EVAL_COLUMNS, resume_step=resume_step)
        t_setup = time.perf_counter() - t_setup0

        eval_episodes = opts.eval_episodes
        references = None
        eval_seed = 1_000_000 + seed
        if eval_episodes > 0:
            from smiling_ros.data.evaluation import expert_spec, reference_returns
            from smiling_ros.methods.smiling.config import expert_section

            eval_env_fn = eval_env_fn or env_fn
            expert = expert_spec(cfg)
            if reward_cls is None and expert not in (None, "scripted") and not Path(expert).exists():
                expert = None  # train-expert writing the expert the config names
            references = reference_returns(eval_env_fn, expert, expert_section(cfg).reference_episodes,
                                           seed=2_000_000 + seed, dataset=dataset, cache=out / "references.json",
                                           task=task)
            eval_env = eval_env_fn()

        policy_meta = {k: base_meta[k] for k in ("task", "method", "variant", "seed", "config", "dataset")}

        def export(step: int):
            return export_actor(model, {**policy_meta, "step": step})

        def write_checkpoint(step: int) -> Path:
            with t_ckpt:
                t, meta_sac = sac_state(model)
                bt, meta_buf = buffer.state_tensors()
                if reward_cls is not None:  # stored env rewards are unused (relabelled); keep the file loadable
                    bt["buffer.rewards"] = torch.nan_to_num(bt["buffer.rewards"], nan=0.0, posinf=0.0, neginf=0.0)
                t.update(bt)
                meta = {**base_meta, "kind": f"{method}_run", "step": step, "sac": meta_sac, "buffer": meta_buf,
                        "elapsed_s": elapsed0 + time.perf_counter() - t_start}
                if reward_model is not None:
                    rt, meta["reward"] = reward_model.state()
                    t.update(rt)
                for k, v in t.items():
                    if v.is_floating_point() and not torch.isfinite(v).all():
                        raise UserError(f"{method}: non-finite values in '{k}' at env step {step} (training diverged); "
                                        f"the last good checkpoint is kept in {out}")
                save_checkpoint(state_path, t, meta)
                ppath = export(step).save(out / "policy.safetensors")
            if callback is not None:
                callback({"step": step, "checkpoint": str(ppath)})
            return ppath

        from stable_baselines3.common.callbacks import BaseCallback

        from smiling_ros.methods.smiling.score import due

        sac_train = model.train

        def checked_train(gradient_steps: int, batch_size: int = 64) -> None:
            """SAC's update, then a check of its losses: a non-finite loss stops the run with a
            one-line error before the diverged weights act or reach a checkpoint."""
            sac_train(gradient_steps, batch_size)
            nv = model.logger.name_to_value
            for key in ("train/critic_loss", "train/actor_loss"):
                v = nv.get(key)
                if v is not None and not math.isfinite(v):
                    raise UserError(f"{method}: non-finite {key.split('/')[1].replace('_', ' ')} at env step "
                                    f"{model.num_timesteps} (training diverged); the last good checkpoint is kept "
                                    f"in {out}")

        model.train = checked_train

        class Loop(BaseCallback):
            """Per vectorised step (``n_envs`` env steps; after SB3 stored the transitions, before
            the SAC update): player rounds, logs, evaluation, checkpoints, the user callback. An
            interval is due when one of its multiples lies in the env steps just made."""

            def __init__(self):
                super().__init__()
                self.stop = False
                self.mark = None  # (step, time, eval+checkpoint time) when SAC's updates started
                self.prev = model.num_timesteps
                self.last_ckpt = model.num_timesteps if resume else -1
                self.bar = None
                self.t_last, self.s_last = time.perf_counter(), model.num_timesteps

            def _on_training_start(self) -> None:
                if progress:
                    from tqdm import tqdm

                    self.bar = tqdm(total=total, initial=model.num_timesteps, desc=f"{method} {task}", unit="step",
                                    dynamic_ncols=True)

            def _on_step(self) -> bool:
                return not self.stop  # a stop requested at the previous step ends learn() here

            def _on_rollout_end(self) -> None:
                step, prev = model.num_timesteps, self.prev
                if step == prev or self.stop:
                    return
                self.prev = step
                if self.mark is None and step >= sac_o.learning_starts:  # SAC updates start: time from here
                    self.mark = (step, time.perf_counter(), t_eval.total + t_ckpt.total)
                if self.bar is not None:
                    self.bar.update(step - prev)
                if reward_model is not None:
                    with t_learner:
                        reward_model.update(step, buffer, sac_o.learning_starts, prev)
                keep = True
                if due(step, opts.log_every, prev) or step >= total:
                    keep = self._log(step) is not False and keep
                if eval_env is not None and (due(step, opts.eval_every, prev) or step >= total):
                    keep = self._eval(step) is not False and keep
                if due(step, opts.checkpoint_every, prev) or step >= total or not keep:
                    write_checkpoint(step)
                    self.last_ckpt = step
                self.stop = not keep

            def _log(self, step: int):
                nv = model.logger.name_to_value
                eps = list(model.ep_info_buffer or [])[-10:]
                now = time.perf_counter()
                row = {
                    "step": step, "time_s": elapsed0 + now - t_start, "episodes": model._episode_num,
                    "ep_return": float(np.mean([e["r"] for e in eps])) if eps else None,
                    "ep_length": float(np.mean([e["l"] for e in eps])) if eps else None,
                    "critic_loss": nv.get("train/critic_loss"), "actor_loss": nv.get("train/actor_loss"),
                    "ent_coef": nv.get("train/ent_coef"),
                    "steps_per_s": (step - self.s_last) / max(now - self.t_last, 1e-9),
                }
                self.t_last, self.s_last = now, step
                if reward_model is not None:
                    row.update({k: v for k, v in reward_model.metrics.items() if k in TRAIN_COLUMNS})
                row = {k: _plain(v) for k, v in row.items()}
                train_log.log(step, **{k: v for k, v in row.items() if k != "step"})
                if self.bar is not None:
                    post = {k: f"{row[k]:.3g}" for k in ("ep_return", "critic_loss") if row.get(k) is not None}
                    self.bar.set_postfix(post, refresh=False)
                if callback is not None:
                    return callback({"step": step, "metrics": row})
                return True

            def _eval(self, step: int):
                from smiling_ros.data.evaluation import evaluate

                with t_eval:
                    res = evaluate(export(step), None, eval_episodes, eval_seed, references, env=eval_env)
                row = {"step": step, "time_s": elapsed0 + time.perf_counter() - t_start, **res}
                eval_log.log(step, **{k: v for k, v in row.items() if k != "step"})
                plot_learning_curve(out, f"{method} on {task}")
                if self.bar is not None:
                    nr = res["normalized_return"]
                    self.bar.write(f"[{method}] step {step}: return {res['mean_return']:.1f}"
                                   + (f", normalised {nr:.2f}" if nr is not None else "")
                                   + (f", success {res['success_rate']:.2f}" if res["success_rate"] is not None else ""))
                if callback is not None:
                    return callback({"step": step, "metrics": {f"eval/{k}": v for k, v in res.items()}})
                return True

            def _on_training_end(self) -> None:
                if self.bar is not None:
                    self.bar.close()

        loop = Loop()
        t_start = time.perf_counter()
        remaining = total - model.num_timesteps
        start_step = model.num_timesteps
        if remaining > 0:
            model.learn(remaining, callback=loop, reset_num_timesteps=not resume, log_interval=10**9)
        final = loop.last_ckpt if loop.stop else model.num_timesteps
        if loop.last_ckpt != final:
            write_checkpoint(final)
        wall = time.perf_counter() - t_start
        ppath = out / "policy.safetensors"
        steps_run = final - start_step
        train_time = wall - t_eval.total - t_ckpt.total
        upd = None
        if loop.mark is not None and final > loop.mark[0]:
            m_step, m_time, m_other = loop.mark
            upd = ((t_start + wall - m_time) - (t_eval.total + t_ckpt.total - m_other)) / (final - m_step)
        score_rows = getattr(reward_model, "score_rows", None)  # score-net rows evaluated (SMILING)
        summary = {
            "method": method, "task": task, "variant": base_meta["variant"], "seed": seed, "steps": final,
            "n_envs": n_envs, "absorbing": absorb,
            "stopped_early": loop.stop, "policy": str(ppath), "references": references,
            "final_eval": last_row(eval_log),
            "wall_clock": {"setup_s": t_setup, "steps_this_session": steps_run, "train_s": train_time,
                           "train_s_per_step": train_time / steps_run if steps_run else None,
                           "update_phase_s_per_step": upd,  # after learning_starts: env step + SAC update (+ reward)
                           "reward_s": t_reward.total, "learner_s": t_learner.total, "eval_s": t_eval.total,
                           "checkpoint_s": t_ckpt.total},
            "reward_metrics": dict(reward_model.metrics) if reward_model is not None else None,
            "score_rows_per_update": (score_rows / max(model._n_updates, 1)
                                      if score_rows is not None and not resume else None),
        }
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
        plot_learning_curve(out, f"{method} on {task}")
        return ppath
    finally:
        for e in envs:
            e.close()
        if eval_env is not None:
            eval_env.close()
