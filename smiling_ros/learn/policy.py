"""The policy interface every consumer uses (eval, controller, BRIDGER sources, demo).

A policy maps one observation (obs_dim,) or a batch (B, obs_dim) to actions in the robot's
units. ``load_policy`` rebuilds any policy checkpoint from its file alone, by its ``kind``:

- ``mlp_policy``: deterministic MLP (BC, DBC, the SMILING/SAC/DAC actor exported for deployment)
- ``bridger``: BRIDGER refiner over a source policy (smiling_ros.methods.bridger)
- ``cvae``: conditional VAE sampling from its prior (a BRIDGER source, smiling_ros.methods.bridger.sources)

Other kinds register a loader in ``POLICY_LOADERS`` (``"module:function"``, imported lazily).
"""
from __future__ import annotations

import importlib
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from smiling_ros.data.dataset import Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.bounds import from_unit, to_unit
from smiling_ros.learn.checkpoint import Checkpoint, load_checkpoint, load_module, module_tensors, save_checkpoint
from smiling_ros.learn.device import select_device
from smiling_ros.learn.nets import ACTIVATIONS, mlp


@runtime_checkable
class Policy(Protocol):
    obs_dim: int
    act_dim: int

    def act(self, obs: np.ndarray) -> np.ndarray:
        """(obs_dim,) -> (act_dim,), or (B, obs_dim) -> (B, act_dim); float32, robot units."""

    def reset(self) -> None:
        """Forget internal state (observation windows, action chunks) at an episode start."""

    def save(self, path: Any, extra_meta: Optional[dict[str, Any]] = None) -> Any:
        """Write the policy as a checkpoint that :func:`load_policy` reads back; returns its path."""


def plan_chunk(policy: Any, obs: np.ndarray) -> np.ndarray:
    """The actions ``policy`` plans for one observation, (chunk, act_dim): a chunking policy's
    ``plan`` (BRIDGER with ``chunk`` > 1), else its single action as a chunk of one."""
    plan = getattr(policy, "plan", None)
    if callable(plan):
        return np.asarray(plan(obs))
    return np.asarray(policy.act(obs)).reshape(1, -1)


class MlpActor(nn.Module):
    """normalised obs -> MLP -> tanh -> [low, high]. Also the layout of SB3's SAC actor mean
    (``latent_pi`` then ``mu``), so a SAC actor exports into it exactly."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "relu"):
        super().__init__()
        self.hidden, self.activation = list(hidden), activation
        self.latent = mlp([obs_dim] + list(hidden), activation, final_activation=True)
        self.mu = nn.Linear(hidden[-1] if hidden else obs_dim, act_dim)

    def forward(self, obs_n: torch.Tensor) -> torch.Tensor:
        """Returns actions in [-1, 1] (tanh-squashed)."""
        return torch.tanh(self.mu(self.latent(obs_n)))


class MlpPolicy:
    """Deterministic MLP policy with observation normalisation and action bounds."""

    kind = "mlp_policy"

    def __init__(self, actor: MlpActor, obs_norm: Normalizer, low: np.ndarray, high: np.ndarray,
                 meta: Optional[dict[str, Any]] = None, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.actor = actor.to(self.device).eval()
        self.obs_norm = obs_norm
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.obs_dim, self.act_dim = obs_norm.dim, int(self.low.shape[0])
        self.meta = dict(meta or {})

    def reset(self) -> None:
        pass

    def scale(self, a_unit: torch.Tensor) -> torch.Tensor:
        return from_unit(a_unit, self.low, self.high)

    def unscale(self, a: torch.Tensor) -> torch.Tensor:
        return to_unit(a, self.low, self.high)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Differentiable batch forward: (B, obs_dim) robot units -> (B, act_dim) robot units."""
        return self.scale(self.actor(self.obs_norm.normalize(obs)))

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs, np.float32), device=self.device)
        single = x.ndim == 1
        a = self.forward(x[None] if single else x).cpu().numpy()
        return a[0] if single else a

    def save(self, path, extra_meta: Optional[dict[str, Any]] = None):
        meta = {
            "kind": self.kind,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "hidden": self.actor.hidden,
            "activation": self.actor.activation,
            "obs_norm": self.obs_norm.to_dict(),
            "action_low": self.low.tolist(),
            "action_high": self.high.tolist(),
            **self.meta,
            **(extra_meta or {}),
        }
        return save_checkpoint(path, module_tensors("actor", self.actor), meta)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: str | torch.device = "cpu") -> "MlpPolicy":
        m = ckpt.meta
        try:
            obs_dim, act_dim, hidden = int(m["obs_dim"]), int(m["act_dim"]), [int(h) for h in m["hidden"]]
            w_in = ckpt.tensors["actor.latent.0.weight" if hidden else "actor.mu.weight"]
            w_out = ckpt.tensors["actor.mu.weight"]
            if len(hidden) > len(ckpt.tensors):
                raise ValueError(f"metadata lists {len(hidden)} hidden layers, the file holds {len(ckpt.tensors)} tensors")
            if tuple(w_in.shape[1:]) != (obs_dim,) or w_out.shape[0] != act_dim:
                raise ValueError(f"metadata says obs_dim {obs_dim}, act_dim {act_dim} but the weights are for "
                                 f"obs_dim {w_in.shape[-1]}, act_dim {w_out.shape[0]}")
            if m.get("activation", "relu") not in ACTIVATIONS:
                raise ValueError(f"unknown activation {m.get('activation')!r}")
            extra = sorted(k for k in ckpt.tensors if not k.startswith("actor."))
            if extra:
                raise ValueError(f"unexpected tensor '{extra[0]}'")
            actor = load_module(ckpt, "actor", lambda: MlpActor(obs_dim, act_dim, hidden, m.get("activation", "relu")),
                                "mlp_policy")
            norm = Normalizer.from_dict(m["obs_norm"])
            low, high = np.asarray(m["action_low"], np.float64), np.asarray(m["action_high"], np.float64)
            if norm.mean.shape != (obs_dim,) or norm.std.shape != (obs_dim,):
                raise ValueError(f"obs_norm has {norm.mean.shape[0]} elements, obs_dim is {obs_dim}")
            if not (np.isfinite(norm.mean).all() and np.isfinite(norm.std).all() and (norm.std > 0).all()):
                raise ValueError("obs_norm mean/std must be finite with std > 0")
            if low.shape != (act_dim,) or high.shape != (act_dim,) or not (np.isfinite(low).all()
                                                                         and np.isfinite(high).all()):
                raise ValueError(f"action_low/action_high must be {act_dim} finite numbers")
            if (low > high).any():
                raise ValueError("action_low > action_high")
            return cls(actor, norm, low, high, m, device)
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, KeyError):
                text = f"missing {text}"
            raise UserError(f"{ckpt.path}: inconsistent mlp_policy checkpoint ({text})") from None


POLICY_LOADERS: dict[str, str] = {
    "mlp_policy": "smiling_ros.learn.policy:MlpPolicy.from_checkpoint",
    "bridger": "smiling_ros.methods.bridger.policy:BridgerPolicy.from_checkpoint",
    "cvae": "smiling_ros.methods.bridger.sources:CvaePolicy.from_checkpoint",
}


def load_policy(path, device: str | torch.device = "auto", obs_dim: Optional[int] = None,
                act_dim: Optional[int] = None, require_integrity: bool = True) -> Policy:
    """Load any policy checkpoint; refuses other kinds, mismatched dimensions and (unless
    ``require_integrity`` is False) files without the integrity record."""
    dev = select_device(device) if isinstance(device, str) else device
    ckpt = load_checkpoint(path, device="cpu", require_integrity=require_integrity)
    ckpt.require(tuple(POLICY_LOADERS), obs_dim=obs_dim, act_dim=act_dim)
    target = POLICY_LOADERS[ckpt.kind]
    mod, _, attr = target.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    try:
        policy = obj(ckpt, device=dev)
    except UserError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        # metadata edited into something a loader did not expect: still one line, never a traceback
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{ckpt.path}: inconsistent {ckpt.kind} checkpoint ({text})") from None
    for key, want in (("obs_dim", obs_dim), ("act_dim", act_dim)):
        have = getattr(policy, key, None)
        if want is not None and have is not None and int(have) != int(want):
            raise UserError(f"{ckpt.path}: {key} is {have} but this robot/task has {want} (checkpoint of another task?)")
    return policy
