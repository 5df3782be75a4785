"""Self-describing demonstration datasets and normalisation.

A dataset is a directory::

    meta.json          format, source, task, rate, fields, dims, episode lengths, statistics
    data.safetensors   obs (N, obs_dim) float32, act (N, act_dim) float32 (optional),
                       episode_ends (E,) int64 (exclusive end index of each episode)
                       success (E,) uint8 (optional, per episode)
                       reward (N,) float32 (optional: reward[k] received for act[k], e.g. from
                       simulated rollouts; offline RL uses it, imitation ignores it)

Episode i occupies rows ``episode_ends[i-1]:episode_ends[i]``. Observation ``obs[k]`` is the
state at step k and ``act[k]`` the command applied from step k to k+1.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from smiling_ros.errors import UserError

FORMAT = "smiling_ros.dataset/1"  # a file-format name, independent of the module path
DATASET_FILES = ("meta.json", "data.safetensors")
MAX_META_BYTES = 64 * 1024 * 1024


@dataclass
class Normalizer:
    """Per-dimension z-scoring: ``(x - mean) / std``. ``std`` is floored so constant
    dimensions (e.g. a fixed target) do not blow up."""

    mean: np.ndarray
    std: np.ndarray

    STD_FLOOR = 1e-2

    @classmethod
    def fit(cls, x: np.ndarray) -> "Normalizer":
        x = np.asarray(x, dtype=np.float64)
        return cls(x.mean(0).astype(np.float32), np.maximum(x.std(0), cls.STD_FLOOR).astype(np.float32))

    @classmethod
    def identity(cls, dim: int) -> "Normalizer":
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def normalize(self, x):
        if isinstance(x, torch.Tensor):
            return (x - torch.as_tensor(self.mean, device=x.device)) / torch.as_tensor(self.std, device=x.device)
        return (np.asarray(x, np.float32) - self.mean) / self.std

    def unnormalize(self, x):
        if isinstance(x, torch.Tensor):
            return x * torch.as_tensor(self.std, device=x.device) + torch.as_tensor(self.mean, device=x.device)
        return np.asarray(x, np.float32) * self.std + self.mean

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalizer":
        return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


def stats(x: np.ndarray) -> dict[str, list[float]]:
    x = np.asarray(x, np.float64)
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
    }


@dataclass
class Dataset:
    obs: np.ndarray  # (N, obs_dim) float32
    act: Optional[np.ndarray]  # (N, act_dim) float32 or None (state-only demos)
    episode_ends: np.ndarray  # (E,) int64
    meta: dict[str, Any] = field(default_factory=dict)
    success: Optional[np.ndarray] = None  # (E,) bool
    reward: Optional[np.ndarray] = None  # (N,) float32, optional per-step reward

    def __post_init__(self) -> None:
        self.obs = np.asarray(self.obs, np.float32)
        if self.reward is not None:
            self.reward = np.asarray(self.reward, np.float32).reshape(-1)
            if len(self.reward) != len(self.obs):
                raise UserError(f"dataset: {len(self.obs)} observations but {len(self.reward)} rewards")
        if self.act is not None:
            self.act = np.asarray(self.act, np.float32)
            if len(self.act) != len(self.obs):
                raise UserError(f"dataset: {len(self.obs)} observations but {len(self.act)} actions")
        self.episode_ends = np.asarray(self.episode_ends, np.int64)
        if len(self.episode_ends) and self.episode_ends[-1] != len(self.obs):
            raise UserError("dataset: episode_ends does not cover all rows")

    # ------------------------------------------------------------------ shape
    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[1])

    @property
    def act_dim(self) -> int:
        return 0 if self.act is None else int(self.act.shape[1])

    @property
    def num_episodes(self) -> int:
        return int(len(self.episode_ends))

    def episode_slices(self) -> Iterator[slice]:
        start = 0
        for end in self.episode_ends:
            yield slice(start, int(end))
            start = int(end)

    def episodes(self) -> Iterator[tuple[np.ndarray, Optional[np.ndarray]]]:
        for s in self.episode_slices():
            yield self.obs[s], None if self.act is None else self.act[s]

    def transitions(self) -> dict[str, np.ndarray]:
        """(s, a, s') within episodes (the last row of each episode has no successor)."""
        idx = np.concatenate([np.arange(s.start, s.stop - 1) for s in self.episode_slices()] or [np.zeros(0, int)])
        out = {"obs": self.obs[idx], "next_obs": self.obs[idx + 1]}
        if self.act is not None:
            out["act"] = self.act[idx]
        if self.reward is not None:
            out["reward"] = self.reward[idx]
        return out

    def obs_normalizer(self) -> Normalizer:
        return Normalizer.fit(self.obs)

    def act_normalizer(self) -> Normalizer:
        if self.act is None:
            raise UserError(f"{self.meta.get('path', 'dataset')}: has no actions (state-only demonstrations)")
        return Normalizer.fit(self.act)

    def require_actions(self, who: str) -> np.ndarray:
        if self.act is None:
            raise UserError(f"{self.meta.get('path', 'dataset')}: {who} needs actions, but the dataset is state-only")
        return self.act

    # ------------------------------------------------------------------ io
    def save(self, directory: str | Path) -> Path:
        """Write atomically: into a temporary sibling directory, then rename into place."""
        from safetensors.numpy import save_file

        from smiling_ros.io.outputs import os_errors

        out = Path(directory)
        if out.is_symlink():
            raise UserError(f"{out}: is a symbolic link; refusing to replace it (name the real directory)")
        if out.exists():
            if not out.is_dir():
                raise UserError(f"{out}: exists and is not a directory; refusing to replace it with a dataset")
            foreign = sorted(p.name for p in out.iterdir() if p.name not in DATASET_FILES)
            if foreign:
                raise UserError(f"{out}: holds files that are not part of a dataset ({', '.join(foreign[:3])}); "
                                "a dataset replaces its directory as a whole: choose another output")
        with os_errors("create directory", out.parent):
            out.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.meta)
        meta.update(
            format=FORMAT,
            obs_dim=self.obs_dim,
            act_dim=self.act_dim,
            num_steps=int(len(self.obs)),
            num_episodes=self.num_episodes,
            episode_lengths=np.diff(np.concatenate([[0], self.episode_ends])).tolist(),
            stats={"obs": stats(self.obs), **({"act": stats(self.act)} if self.act is not None else {})},
        )
        meta.pop("path", None)
        tensors = {"obs": self.obs, "episode_ends": self.episode_ends}
        if self.act is not None:
            tensors["act"] = self.act
        if self.success is not None:
            tensors["success"] = np.asarray(self.success, np.uint8)
        if self.reward is not None:
            tensors["reward"] = np.asarray(self.reward, np.float32)
        from smiling_ros.learn.checkpoint import public_mode

        with os_errors("write", out):
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        old = out.with_name(f".{out.name}.old")
        try:
            os.chmod(tmp, public_mode(directory=True))
            try:
                save_file(tensors, str(tmp / "data.safetensors"))
            except (OSError, UserError):
                raise
            except Exception as exc:  # noqa: BLE001 - safetensors reports I/O errors (a full disk) as its own type
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"{out}: cannot write dataset ({text})") from None
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            for name in ("data.safetensors", "meta.json"):  # on disk, with a checkpoint's mode, before the rename
                os.chmod(tmp / name, public_mode())
                fd = os.open(tmp / name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if out.exists():  # the previous version steps aside, the new one moves in
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out, old)
            os.replace(tmp, out)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not out.exists():  # failed between the two renames: put the previous back
                os.replace(old, out)
            if isinstance(exc, OSError):
                from smiling_ros.io.outputs import os_error

                raise os_error(exc, out, "write dataset") from None
            raise
        shutil.rmtree(old, ignore_errors=True)  # also a stale one from a save killed between the renames
        self.meta = meta
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "Dataset":
        """Read a dataset directory; anything missing, corrupt or inconsistent is a one-line
        :class:`UserError` naming the file (nothing in it is executed: JSON and safetensors only)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        from smiling_ros.io.inputs import check_file, describe_mode, read_bytes

        d = Path(directory)
        if str(directory) == "":
            raise UserError("dataset: empty path")
        if not d.is_dir():
            if d.exists() and not d.is_file():
                raise UserError(f"{d}: is {describe_mode(d.stat().st_mode)}, not a dataset directory")
            if d.exists():
                raise UserError(f"{d}: is a file, not a dataset directory (datasets are directories made by "
                                "'smiling-ros import-bag' or 'rollout')")
            old = d.with_name(f".{d.name}.old")
            if (old / "meta.json").is_file():
                raise UserError(f"{d}: dataset directory not found (a save was interrupted; the previous "
                                f"version is in {old}: rename it back)")
            raise UserError(f"{d}: dataset directory not found")
        if not os.path.lexists(d / "meta.json"):
            raise UserError(f"{d}: not a dataset (no meta.json; make one with 'smiling-ros import-bag')")
        from smiling_ros.io.inputs import parse_json

        meta = parse_json(read_bytes(d / "meta.json", "dataset metadata", MAX_META_BYTES), str(d / "meta.json"))
        if not isinstance(meta, dict):
            raise UserError(f"{d / 'meta.json'}: expected a JSON object, got {type(meta).__name__}")
        if meta.get("format") != FORMAT:
            raise UserError(f"{d}: unsupported dataset format {meta.get('format')!r} (expected {FORMAT})")
        data = d / "data.safetensors"
        if not os.path.lexists(data):
            raise UserError(f"{d}: data.safetensors missing")
        check_file(data, "dataset file")
        try:
            t = load_file(str(data))
        except FileNotFoundError:
            raise UserError(f"{d}: data.safetensors missing") from None
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise UserError(f"{data}: unreadable ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc})") from None
        for key in ("obs", "episode_ends"):
            if key not in t:
                raise UserError(f"{data}: missing tensor '{key}'")
        obs, act, ends = t["obs"], t.get("act"), t["episode_ends"]
        if obs.ndim != 2 or obs.shape[0] == 0 or obs.shape[1] == 0 or obs.dtype.kind != "f":
            raise UserError(f"{data}: 'obs' must be a non-empty (N, obs_dim) float array, got {obs.dtype}{list(obs.shape)}")
        n = obs.shape[0]
        if act is not None and (act.ndim != 2 or act.shape[0] != n or act.dtype.kind != "f"):
            raise UserError(f"{data}: 'act' must be a ({n}, act_dim) float array, got {act.dtype}{list(act.shape)}")
        if ends.ndim != 1 or ends.dtype.kind not in "iu" or len(ends) == 0 or ends[0] <= 0 \
                or (np.diff(ends) <= 0).any() or ends[-1] != n:
            raise UserError(f"{data}: 'episode_ends' must be increasing episode end rows ending at {n}")
        if not np.isfinite(obs).all() or (act is not None and not np.isfinite(act).all()):
            raise UserError(f"{data}: contains NaN or inf")
        success = t.get("success")
        if success is not None and success.shape != ends.shape:
            raise UserError(f"{data}: 'success' has {success.shape[0] if success.ndim else 0} entries for {len(ends)} episodes")
        reward = t.get("reward")
        if reward is not None and reward.shape != (n,):
            raise UserError(f"{data}: 'reward' must have {n} entries, got shape {list(reward.shape)}")
        for key, want in (("obs_dim", obs.shape[1]), ("act_dim", 0 if act is None else act.shape[1])):
            if key in meta and meta[key] != want:
                raise UserError(f"{d / 'meta.json'}: {key} is {meta[key]!r} but the data has {want} (files from different datasets?)")
        meta["path"] = str(d)
        success = success.astype(bool) if success is not None else None
        reward = reward if reward is not None and np.isfinite(reward).all() else None
        return cls(obs, act, ends, meta, success, reward)

    @classmethod
    def from_episodes(
        cls,
        episodes: list[tuple[np.ndarray, Optional[np.ndarray]]],
        meta: Optional[dict[str, Any]] = None,
        success: Optional[list[bool]] = None,
    ) -> "Dataset":
        if not episodes:
            raise UserError("dataset: no episodes")
        obs = np.concatenate([o for o, _ in episodes])
        has_act = all(a is not None for _, a in episodes)
        act = np.concatenate([a for _, a in episodes]) if has_act else None
        ends = np.cumsum([len(o) for o, _ in episodes])
        return cls(obs, act, ends, dict(meta or {}), None if success is None else np.asarray(success, bool))

    def subset(self, episodes: int) -> "Dataset":
        """The first ``episodes`` episodes."""
        eps = list(self.episodes())[:episodes]
        succ = None if self.success is None else self.success[:episodes]
        return Dataset.from_episodes(eps, self.meta, None if succ is None else list(succ))
