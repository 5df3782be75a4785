"""BRIDGER source policies: where sampling starts.

Every source has one interface, ``sample(obs) -> action``: obs (obs_dim,) -> (act_dim,) or
(B, obs_dim) -> (B, act_dim), float32, robot units, *not* clamped (BRIDGER refines it; only its
final action is clamped). Sources:

- :class:`GaussianSource` ``gaussian``: standard normal in the normalised action space (BRIDGER
  then is a plain diffusion policy).
- ``cvae``: a conditional VAE trained by the project (:class:`CvaePolicy`, checkpoint kind
  ``cvae``; MLP 3x512 ELU, latent 64); samples decode a latent drawn from the N(0, I) prior.
- :class:`HeuristicSource` ``heuristic``: a rule-based controller shipped with a task (for
  ArmReach, the straight-line controller that ignores the post). Only controllers named in
  :data:`HEURISTICS` are accepted, so a checkpoint can name one without any code in it.
- :class:`PolicySource` ``policy``: any policy checkpoint ``load_policy`` reads (the SMILING
  actor, DBC and BC as ``mlp_policy``; a ``cvae``).

``source_to_checkpoint`` / ``source_from_checkpoint`` embed a source in a BRIDGER checkpoint
(tensors under ``source.``, description in ``meta['source']``), so one file deploys.
"""
from __future__ import annotations

import importlib
from typing import Any, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from smiling_ros.data.dataset import Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import Checkpoint, load_module, module_tensors, save_checkpoint
from smiling_ros.methods.bridger.nets import NumpyMLP

# Heuristic controllers a checkpoint may name: name -> "module:class" (constructed without arguments).
HEURISTICS: dict[str, str] = {
    "arm_reach_straight_line": "smiling_ros.envs.experts:StraightLineController",
}


class Source(Protocol):
    name: str  # gaussian | cvae | heuristic | policy
    deterministic: bool  # True: the same obs always gives the same action
    obs_dim: int
    act_dim: int

    def sample(self, obs: np.ndarray) -> np.ndarray:
        """(obs_dim,) -> (act_dim,) or (B, obs_dim) -> (B, act_dim), robot units, float32."""


def _batch(obs: np.ndarray, obs_dim: int, who: str) -> tuple[np.ndarray, bool]:
    x = np.asarray(obs, np.float32)
    single = x.ndim == 1
    x2 = x[None] if single else x
    if x2.ndim != 2 or x2.shape[1] != obs_dim:
        raise UserError(f"{who}: observation has shape {x.shape}, expected ({obs_dim},) or (B, {obs_dim})")
    return x2, single


class GaussianSource:
    """Standard normal in the normalised action space: act_norm.unnormalize(N(0, I))."""

    name = "gaussian"
    deterministic = False

    def __init__(self, obs_dim: int, act_norm: Normalizer, seed: Optional[int] = None):
        self.obs_dim, self.act_dim, self.act_norm = int(obs_dim), act_norm.dim, act_norm
        self.rng = np.random.default_rng(seed)

    def sample(self, obs: np.ndarray) -> np.ndarray:
        x, single = _batch(obs, self.obs_dim, "gaussian source")
        a = self.act_norm.unnormalize(self.rng.standard_normal((len(x), self.act_dim), dtype=np.float32))
        return a[0] if single else a


class HeuristicSource:
    """A rule-based controller from :data:`HEURISTICS` (its ``act`` works on one or a batch)."""

    name = "heuristic"
    deterministic = True

    def __init__(self, key: str):
        if key not in HEURISTICS:
            raise UserError(f"bridger source: unknown heuristic '{key}' (known: {', '.join(HEURISTICS)})")
        mod, _, cls = HEURISTICS[key].partition(":")
        self.key = key
        self.controller = getattr(importlib.import_module(mod), cls)()
        self.obs_dim, self.act_dim = int(self.controller.obs_dim), int(self.controller.act_dim)

    @classmethod
    def for_controller(cls, controller: Any) -> "HeuristicSource":
        """The registered heuristic of which ``controller`` is an instance."""
        path = f"{type(controller).__module__}:{type(controller).__qualname__}"
        for key, target in HEURISTICS.items():
            if target == path:
                return cls(key)
        raise UserError(f"bridger source: controller {path} is not a registered heuristic")

    def sample(self, obs: np.ndarray) -> np.ndarray:
        x, single = _batch(obs, self.obs_dim, f"heuristic '{self.key}'")
        a = np.asarray(self.controller.act(x[0] if single else x), np.float32)
        return a.reshape(self.act_dim) if single else a.reshape(len(x), self.act_dim)


class PolicySource:
    """Any loaded policy (``load_policy``) as a source; ``ckpt`` is kept so it can be embedded."""

    name = "policy"

    def __init__(self, policy: Any, ckpt: Checkpoint):
        self.policy, self.ckpt = policy, ckpt
        self.obs_dim, self.act_dim = int(policy.obs_dim), int(policy.act_dim)
        self.kind = ckpt.kind
        self.deterministic = not bool(getattr(policy, "stochastic", False))
        if self.kind == "cvae":
            self.name = "cvae"

        self._np = _numpy_mlp_policy(policy) if self.kind == "mlp_policy" else None

    def sample(self, obs: np.ndarray) -> np.ndarray:
        x, single = _batch(obs, self.obs_dim, f"source policy '{self.kind}'")
        if single and self._np is not None:
            return self._np(x[0])
        return np.asarray(self.policy.act(x[0] if single else x), np.float32)

    def seed(self, seed: Optional[int]) -> None:
        if hasattr(self.policy, "seed"):
            self.policy.seed(seed)


def _numpy_mlp_policy(policy: Any):
    """numpy forward of an ``MlpPolicy`` for one observation (same maths as its torch forward:
    normalise, hidden layers each followed by the activation, mu, tanh, scale to [low, high]);
    None when the activation has no numpy version here."""
    from smiling_ros.learn.nets import np_activation

    actor = getattr(policy, "actor", None)
    if actor is None:
        return None
    try:
        act = np_activation(getattr(actor, "activation", ""))
    except UserError:
        return None
    lins = [m for m in actor.latent if isinstance(m, nn.Linear)]
    layers = [(m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy()) for m in lins]
    wm, bm = actor.mu.weight.detach().cpu().numpy().T.copy(), actor.mu.bias.detach().cpu().numpy().copy()
    mean, std = policy.obs_norm.mean, policy.obs_norm.std
    low, span = policy.low, policy.high - policy.low

    def forward(o: np.ndarray) -> np.ndarray:
        h = (o - mean) / std
        for w, b in layers:
            h = act(h @ w + b)
        return (low + (np.tanh(h @ wm + bm) + 1) * 0.5 * span).astype(np.float32)

    return forward


# ---------------------------------------------------------------------------------------- CVAE
class CVAE(nn.Module):
    """Conditional VAE over normalised actions given normalised observations.

    encoder [o, a] -> MLP -> (mu, logvar) (latent,); decoder [o, z] -> MLP -> a.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (512, 512, 512), latent: int = 64):
        super().__init__()
        from smiling_ros.learn.nets import mlp

        self.obs_dim, self.act_dim, self.hidden, self.latent = int(obs_dim), int(act_dim), [int(h) for h in hidden], int(latent)
        self.encoder = mlp([self.obs_dim + self.act_dim] + self.hidden + [2 * self.latent], "elu")
        self.decoder = mlp([self.obs_dim + self.latent] + self.hidden + [self.act_dim], "elu")

    def hparams(self) -> dict:
        return dict(obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=self.hidden, latent=self.latent)

    def forward(self, obs_n: torch.Tensor, act_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (reconstruction (B, A), mu (B, L), logvar (B, L))."""
        mu, logvar = self.encoder(torch.cat([obs_n, act_n], -1)).chunk(2, -1)
        logvar = logvar.clamp(-10.0, 10.0)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decoder(torch.cat([obs_n, z], -1)), mu, logvar

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(q(z | o, a) || N(0, I)) per sample, summed over latent dimensions: (B,)."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)

    def decode(self, obs_n: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([obs_n, z], -1))


class CvaePolicy:
    """A trained CVAE as a (stochastic) policy: decode z ~ N(0, I) given the observation.

    Checkpoint kind ``cvae`` (loadable with ``load_policy``). Single observations run a numpy
    forward of the decoder."""

    kind = "cvae"
    stochastic = True

    def __init__(self, cvae: CVAE, obs_norm: Normalizer, act_norm: Normalizer, meta: Optional[dict] = None,
                 device: str | torch.device = "cpu", seed: Optional[int] = None):
        self.cvae = cvae.to(device).eval()
        self.device = torch.device(device)
        self.obs_norm, self.act_norm = obs_norm, act_norm
        self.obs_dim, self.act_dim = obs_norm.dim, act_norm.dim
        self.meta = dict(meta or {})
        self.rng = np.random.default_rng(seed)
        self._np_decoder = NumpyMLP(self.cvae.decoder, "elu")

    def seed(self, seed: Optional[int]) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        x, single = _batch(obs, self.obs_dim, "cvae")
        on = self.obs_norm.normalize(x)
        z = self.rng.standard_normal((len(x), self.cvae.latent), dtype=np.float32)
        an = self._np_decoder(np.concatenate([on, z], -1).astype(np.float32))
        a = self.act_norm.unnormalize(an).astype(np.float32)
        return a[0] if single else a

    def save(self, path, extra_meta: Optional[dict] = None):
        meta = {"kind": self.kind, "obs_dim": self.obs_dim, "act_dim": self.act_dim, "cvae": self.cvae.hparams(),
                "obs_norm": self.obs_norm.to_dict(), "act_norm": self.act_norm.to_dict(),
                **{k: v for k, v in self.meta.items() if k not in ("format", "versions")}, **(extra_meta or {})}
        return save_checkpoint(path, module_tensors("cvae", self.cvae), meta)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: str | torch.device = "cpu") -> "CvaePolicy":
        m = ckpt.meta
        try:
            hp = m["cvae"]
            cvae = load_module(ckpt, "cvae", lambda: CVAE(int(hp["obs_dim"]), int(hp["act_dim"]), list(hp["hidden"]),
                                                          int(hp["latent"])), "cvae")
            return cls(cvae, Normalizer.from_dict(m["obs_norm"]), Normalizer.from_dict(m["act_norm"]), m, device)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise UserError(f"{ckpt.path}: inconsistent cvae checkpoint ({str(exc).splitlines()[0]})") from None


# ---------------------------------------------------------------------------- (de)serialisation
def source_to_checkpoint(source: Source) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(meta['source'], tensors under 'source.') describing ``source``."""
    if isinstance(source, GaussianSource):
        return {"type": "gaussian"}, {}
    if isinstance(source, HeuristicSource):
        return {"type": "heuristic", "heuristic": source.key}, {}
    if isinstance(source, PolicySource):
        meta = {k: v for k, v in source.ckpt.meta.items() if k not in ("format", "versions")}
        return ({"type": source.name, "kind": source.kind, "meta": meta},
                {f"source.{k}": v for k, v in source.ckpt.tensors.items()})
    raise UserError(f"bridger: cannot save a source of type {type(source).__name__}")


def source_from_checkpoint(ckpt: Checkpoint, act_norm: Normalizer, device: str | torch.device = "cpu",
                           seed: Optional[int] = None) -> Source:
    desc = ckpt.meta.get("source") or {}
    typ = desc.get("type")
    obs_dim = int(ckpt.meta["obs_dim"])
    if typ == "gaussian":
        return GaussianSource(obs_dim, act_norm, seed)
    if typ == "heuristic":
        return HeuristicSource(str(desc.get("heuristic")))
    if typ in ("policy", "cvae"):
        from smiling_ros.learn.checkpoint import FORMAT
        from smiling_ros.learn.policy import POLICY_LOADERS

        kind = desc.get("kind")
        if kind not in POLICY_LOADERS or kind == "bridger":
            raise UserError(f"{ckpt.path}: embedded source policy of unsupported kind '{kind}'")
        sub = Checkpoint(ckpt.sub("source"), {"format": FORMAT, **dict(desc.get("meta") or {})}, ckpt.path)
        mod, _, attr = POLICY_LOADERS[kind].partition(":")
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
        src = PolicySource(obj(sub, device=device), sub)
        src.seed(seed)
        return src
    raise UserError(f"{ckpt.path}: bridger checkpoint has no usable source description ({desc!r})")
