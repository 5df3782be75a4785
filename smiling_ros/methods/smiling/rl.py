"""stable-baselines3 SAC glue: construction, pickle-free state save/restore, actor export.

SB3's own ``.zip`` save pickles parts of the model; nothing here uses it. The trainer's state
(SAC networks, temperature, optimisers, replay buffer, counters) is written as safetensors
tensors plus JSON metadata through :mod:`smiling_ros.learn.checkpoint`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from smiling_ros.data.dataset import Normalizer
from smiling_ros.learn.checkpoint import load_optimizer_state, optimizer_state, strip
from smiling_ros.learn.policy import MlpActor, MlpPolicy


def build_sac(env, opts, device: torch.device, seed: int, buffer_cls=None):
    """SB3 SAC with the options of a :class:`~smiling_ros.methods.smiling.config.SacSection`.

    ``env``: a Gymnasium env or an SB3 VecEnv of ``n`` copies. SB3 counts ``train_freq`` in
    vectorised steps (``n`` env steps each), so ``gradient_steps`` is multiplied by ``n``: the
    updates per env step stay ``gradient_steps / train_freq`` whatever ``n`` (default 1)."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    from smiling_ros.methods.smiling.buffer import RelabelingReplayBuffer

    n_envs = int(getattr(env, "num_envs", 1))
    model = SAC(
        "MlpPolicy", env, learning_rate=opts.lr, buffer_size=opts.buffer_size, learning_starts=opts.learning_starts,
        batch_size=opts.batch_size, tau=opts.tau, gamma=opts.gamma, train_freq=opts.train_freq,
        gradient_steps=opts.gradient_steps * n_envs, ent_coef=f"auto_{opts.ent_coef_init}",
        replay_buffer_class=buffer_cls or RelabelingReplayBuffer,
        policy_kwargs={"net_arch": list(opts.hidden)}, seed=seed, device=device, verbose=0,
    )
    # An in-memory logger (the trainer reads name_to_value and writes its own CSV); SB3's default
    # would create an empty /tmp/SB3-<date> directory per run.
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def sac_state(model) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Networks, temperature, optimisers and counters of an SB3 SAC (buffer separately)."""
    t = {f"sac.policy.{k}": v for k, v in model.policy.state_dict().items()}
    meta: dict[str, Any] = {}
    if model.log_ent_coef is not None:
        t["sac.log_ent_coef"] = model.log_ent_coef.detach().clone()
    for name, opt in (("actor", model.actor.optimizer), ("critic", model.critic.optimizer),
                      ("ent", model.ent_coef_optimizer)):
        if opt is None:
            continue
        ot, om = optimizer_state(opt, f"sac.opt.{name}")
        t.update(ot)
        meta[f"opt_{name}"] = om
    meta.update(num_timesteps=int(model.num_timesteps), episode_num=int(model._episode_num),
                n_updates=int(model._n_updates))
    return t, meta


def load_sac_state(model, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    model.policy.load_state_dict(strip(tensors, "sac.policy"))
    if model.log_ent_coef is not None and "sac.log_ent_coef" in tensors:
        with torch.no_grad():
            model.log_ent_coef.copy_(tensors["sac.log_ent_coef"].to(model.log_ent_coef.device))
    for name, opt in (("actor", model.actor.optimizer), ("critic", model.critic.optimizer),
                      ("ent", model.ent_coef_optimizer)):
        if opt is not None and f"opt_{name}" in meta:
            load_optimizer_state(opt, tensors, f"sac.opt.{name}", meta[f"opt_{name}"])
    model.num_timesteps = int(meta["num_timesteps"])
    model._episode_num = int(meta["episode_num"])
    model._n_updates = int(meta["n_updates"])


def export_actor(model, meta: dict[str, Any]) -> MlpPolicy:
    """The SAC actor's deterministic mean (tanh(mu)) as an ``mlp_policy`` (no normalisation: SB3
    feeds raw observations), action bounds from the env's action space."""
    space_o, space_a = model.observation_space, model.action_space
    obs_dim, act_dim = int(np.prod(space_o.shape)), int(np.prod(space_a.shape))
    hidden = list(model.actor.net_arch)
    actor = MlpActor(obs_dim, act_dim, hidden, "relu")
    actor.latent.load_state_dict({k: v.detach().cpu() for k, v in model.actor.latent_pi.state_dict().items()})
    actor.mu.load_state_dict({k: v.detach().cpu() for k, v in model.actor.mu.state_dict().items()})
    return MlpPolicy(actor, Normalizer.identity(obs_dim), space_a.low, space_a.high, meta)
