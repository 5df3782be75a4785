"""LeRobotDataset v3 (codebase version ``v3.0``) <-> smiling_ros datasets, written and read with
pyarrow alone (the lerobot library is not a dependency).

Layout written by :func:`export_lerobot` (the one ``lerobot.datasets.lerobot_dataset`` reads)::

    meta/info.json                              codebase_version "v3.0", fps, features, totals,
                                                chunks_size, data_path, splits
    meta/stats.json                             per feature: min, max, mean, std, count, q01..q99
    meta/tasks.parquet                          one task (index: the task text, column task_index)
    meta/episodes/chunk-000/file-000.parquet    per episode: episode_index, tasks, length,
                                                data/chunk_index, data/file_index,
                                                dataset_from_index, dataset_to_index,
                                                meta/episodes/chunk_index, meta/episodes/file_index,
                                                stats/<feature>/<stat>
    data/chunk-000/file-000.parquet             per frame: observation.state, action
                                                (fixed-size float32 lists), [next.reward],
                                                timestamp, frame_index, episode_index, index,
                                                task_index
    meta/smiling_ros.json                       this project's metadata (fields, topic rates, the
                                                action's joints, episodes' rules), for a round trip

Features are named: ``observation.state`` carries the observation element names
(``/joint_states:position[elbow]``, ...), ``action`` the command's joint names when the dataset
records them (``command.joints``), else the action element names. ``timestamp`` is
``frame_index / fps``. Data files hold whole episodes and start a new file past
``data_files_size_in_mb``.

:func:`import_lerobot` reads a local v3 dataset of state and action features: every 1-D numeric
``observation.*`` feature (in info.json order) becomes the observation, ``action`` the action;
image and video features are left out (with a note). Anything missing or inconsistent is a
one-line :class:`UserError` naming the file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from smiling_ros.errors import UserError

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILE_MB = 100
VIDEO_FILE_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
STATE = "observation.state"
ACTION = "action"
REWARD = "next.reward"
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("LeRobot datasets need pyarrow (pip install pyarrow)") from None
    return pa, pq


def feature_stats(x: np.ndarray) -> dict[str, list[float]]:
    """LeRobot's per-feature statistics of ``x`` (N, D): min, max, mean, std, count, q01..q99."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    out = {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
           "std": x.std(0).tolist(), "count": [int(len(x))]}
    for q in QUANTILES:
        out[f"q{int(round(q * 100)):02d}"] = np.quantile(x, q, axis=0).tolist()
    return out


def _fixed_list(pa, x: np.ndarray):
    """(N, D) float32 -> a FixedSizeList<float32>[D] array (datasets' ``Sequence(length=D)``)."""
    x = np.ascontiguousarray(x, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])


def _tasks_table(pa, task: str):
    """meta/tasks.parquet as pandas writes ``DataFrame({'task_index': [0]}, index=[task])``."""
    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    schema = pa.schema([("task_index", pa.int64()), ("__index_level_0__", pa.string())],
                       metadata={b"pandas": json.dumps(pandas_meta).encode()})
    return pa.table({"task_index": pa.array([0], pa.int64()), "__index_level_0__": pa.array([task])}, schema=schema)


def _fps(rate: float) -> float | int:
    return int(round(rate)) if abs(rate - round(rate)) < 1e-9 else float(rate)


def export_lerobot(ds: Any, out: str | Path, task: str = "", robot_type: Optional[str] = None,
                   file_mb: float = DATA_FILE_MB, overwrite: bool = False) -> dict[str, Any]:
    """Write dataset ``ds`` (:class:`smiling_ros.data.dataset.Dataset`) as a LeRobot v3 dataset in
    the directory ``out`` (new or empty, or replaced with ``overwrite``); returns the info.json
    dict. ``task``: the task text of every episode (default: the dataset's task, else
    'demonstration'); ``file_mb``: data file size limit."""
    pa, pq = _pa()
    out = Path(out)
    meta = ds.meta
    rate = float(meta.get("rate_hz") or 0)
    if not (rate > 0 and math.isfinite(rate)):
        raise UserError(f"{meta.get('path', 'dataset')}: no dataset rate (meta.json rate_hz); cannot set fps")
    fps = _fps(rate)
    obs_names = list(meta.get("obs_names") or [f"obs_{i}" for i in range(ds.obs_dim)])
    if len(obs_names) != ds.obs_dim:
        obs_names = [f"obs_{i}" for i in range(ds.obs_dim)]
    features: dict[str, Any] = {STATE: {"dtype": "float32", "shape": [ds.obs_dim], "names": obs_names}}
    if ds.act is not None:
        spec = meta.get("action_spec") or {}
        names = list(spec.get("joints") or []) or list(meta.get("act_names") or [])
        if len(names) != ds.act_dim:
            names = [f"act_{i}" for i in range(ds.act_dim)]
        features[ACTION] = {"dtype": "float32", "shape": [ds.act_dim], "names": names}
    if ds.reward is not None:
        features[REWARD] = {"dtype": "float32", "shape": [1], "names": None}
    features.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})
    task = task or str(meta.get("task") or "") or "demonstration"

    n = len(ds.obs)
    ends = np.asarray(ds.episode_ends, np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    episode_index = np.repeat(np.arange(len(ends)), ends - starts)
    frame_index = np.arange(n) - np.repeat(starts, ends - starts)
    columns = {STATE: ds.obs}
    if ds.act is not None:
        columns[ACTION] = ds.act
    if ds.reward is not None:
        columns[REWARD] = ds.reward
    columns.update(timestamp=(frame_index / rate).astype(np.float32), frame_index=frame_index,
                   episode_index=episode_index, index=np.arange(n), task_index=np.zeros(n, np.int64))

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: exists and is not empty (choose a new directory, or --overwrite)")
    for old in (out / "data", out / "meta" / "episodes"):  # overwrite: no stale files of a larger export
        if old.is_dir():
            for f in old.glob("*/*.parquet"):
                f.unlink()
    (out / "meta").mkdir(parents=True, exist_ok=True)

    def table(lo: int, hi: int):
        arrays, fields = [], []
        for key, col in columns.items():
            ft = features[key]
            if ft["shape"] == [1]:
                arr = pa.array(np.asarray(col[lo:hi]).astype(ft["dtype"]))
            else:
                arr = _fixed_list(pa, col[lo:hi])
            arrays.append(arr)
            fields.append(pa.field(key, arr.type))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    row_bytes = 4 * (ds.obs_dim + ds.act_dim + 2) + 8 * 4
    per_file = max(1, int(file_mb * 1024 * 1024 / row_bytes))
    chunk, file_i, file_rows, writer = 0, 0, 0, None
    episodes: list[dict[str, Any]] = []
    try:
        for e, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
            if writer is not None and file_rows + (b - a) > per_file:
                writer.close()
                writer, file_rows = None, 0
                file_i += 1
                if file_i == CHUNKS_SIZE:
                    chunk, file_i = chunk + 1, 0
            t = table(a, b)
            if writer is None:
                path = out / DATA_PATH.format(chunk_index=chunk, file_index=file_i)
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(path, t.schema, compression="snappy")
            writer.write_table(t)
            file_rows += b - a
            ep: dict[str, Any] = {
                "episode_index": e, "tasks": [task], "length": b - a,
                "data/chunk_index": chunk, "data/file_index": file_i,
                "dataset_from_index": a, "dataset_to_index": b,
                "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
            }
            for key in columns:
                for stat, v in feature_stats(np.asarray(columns[key][a:b])).items():
                    ep[f"stats/{key}/{stat}"] = v
            episodes.append(ep)
    finally:
        if writer is not None:
            writer.close()
    ep_path = out / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episodes), ep_path, compression="snappy")
    pq.write_table(_tasks_table(pa, task), out / "meta" / "tasks.parquet")
    stats = {key: feature_stats(np.asarray(col)) for key, col in columns.items()}
    (out / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": int(len(ends)),
        "total_frames": int(n),
        "total_tasks": 1,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": file_mb,
        "video_files_size_in_mb": VIDEO_FILE_MB,
        "fps": fps,
        "splits": {"train": f"0:{len(ends)}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": features,
    }
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    keep = {k: meta[k] for k in ("source", "task", "config", "rate_hz", "fields", "obs_names", "act_names",
                                 "action_spec", "topic_rates_hz", "episodes_from", "episodes", "warnings")
            if k in meta}
    if ds.success is not None:
        keep["success"] = [bool(s) for s in ds.success]
    (out / "meta" / "smiling_ros.json").write_text(json.dumps(keep, indent=1))
    return info


# --------------------------------------------------------------------------- import
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing (not a LeRobot v3 dataset?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({getattr(exc, 'strerror', None) or exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt JSON ({exc.msg})") from None


def _names(ft: dict[str, Any], dim: int, key: str) -> list[str]:
    names = ft.get("names")
    if isinstance(names, dict):  # {"motors": [...]} in some datasets
        names = [n for v in names.values() if isinstance(v, list) for n in v]
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return list(names)
    return [f"{key}[{i}]" for i in range(dim)]


def _column(pa, table, key: str, dim: int, path: str) -> np.ndarray:
    """Feature ``key`` of a data table as (N, dim) float64 (fixed-size or variable lists, or
    scalars for 1-element features)."""
    col = table.column(key).combine_chunks()
    n = len(col)
    t = col.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        x = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float64)
        if x.size != n * dim:
            raise UserError(f"{path}: feature '{key}' does not have {dim} values in every frame (info.json shape)")
        return x.reshape(n, dim)
    if dim == 1 and (pa.types.is_floating(t) or pa.types.is_integer(t)):
        return np.asarray(col.to_numpy(zero_copy_only=False), np.float64).reshape(n, 1)
    raise UserError(f"{path}: feature '{key}' is not numeric (type {t})")


def import_lerobot(src: str | Path, out: str | Path, log: Callable[[str], None] = print) -> Any:
    """Read the local LeRobot v3 dataset at ``src`` (state and action features) and save it as a
    smiling_ros dataset at ``out``; returns the dataset."""
    pa, pq = _pa()
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src}: not a directory (a LeRobot v3 dataset is a directory with meta/info.json)")
    info = _read_json(src / "meta" / "info.json")
    where = src / "meta" / "info.json"
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise UserError(f"{where}: no 'features' mapping")
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise UserError(f"{where}: codebase_version {version!r}; only v3 datasets are read "
                        "(convert older ones with lerobot's v2.1 -> v3.0 script)")
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (fps > 0 and math.isfinite(fps)):
        raise UserError(f"{where}: fps must be a positive number, got {fps!r}")
    features = info["features"]
    skipped, obs_keys = [], []
    for key, ft in features.items():
        if not isinstance(ft, dict):
            raise UserError(f"{where}: feature '{key}' is not a mapping")
        if ft.get("dtype") in ("image", "video"):
            skipped.append(key)
        elif key.startswith("observation.") and ft.get("dtype") in ("float32", "float64", "int64", "int32") \
                and isinstance(ft.get("shape"), list) and len(ft["shape"]) == 1:
            obs_keys.append(key)
    if not obs_keys:
        raise UserError(f"{where}: no 1-D numeric observation.* feature (state); images alone are not read")
    if skipped:
        log(f"note: {src}: image/video features left out: {', '.join(skipped)}")
    has_act = ACTION in features
    if has_act and (not isinstance(features[ACTION].get("shape"), list) or len(features[ACTION]["shape"]) != 1):
        raise UserError(f"{where}: feature 'action' must be 1-D")
    data_path = info.get("data_path", DATA_PATH)
    if not isinstance(data_path, str) or not data_path.startswith("data/"):
        raise UserError(f"{where}: data_path must be a path under data/, got {data_path!r}")
    files = sorted((src / "data").glob("*/*.parquet"))
    if not files:
        raise UserError(f"{src / 'data'}: no parquet files")
    obs_parts: list[np.ndarray] = []
    act_parts: list[np.ndarray] = []
    rew_parts: list[np.ndarray] = []
    ep_parts: list[np.ndarray] = []
    idx_parts: list[np.ndarray] = []
    has_rew = REWARD in features
    dims = {k: int(features[k]["shape"][0]) for k in obs_keys + ([ACTION] if has_act else [])}
    for f in files:
        try:
            t = pq.read_table(f)
        except Exception as exc:  # noqa: BLE001 - untrusted file
            raise UserError(f"{f}: unreadable parquet ({' '.join(str(exc).split())[:160]})") from None
        for key in list(dims) + ["episode_index", "index"] + ([REWARD] if has_rew else []):
            if key not in t.column_names:
                raise UserError(f"{f}: column '{key}' missing (info.json lists it)")
        obs_parts.append(np.concatenate([_column(pa, t, k, dims[k], str(f)) for k in obs_keys], axis=1))
        if has_act:
            act_parts.append(_column(pa, t, ACTION, dims[ACTION], str(f)))
        if has_rew:
            rew_parts.append(_column(pa, t, REWARD, 1, str(f))[:, 0])
        ep_parts.append(np.asarray(t.column("episode_index").to_numpy(), np.int64))
        idx_parts.append(np.asarray(t.column("index").to_numpy(), np.int64))
    order = np.argsort(np.concatenate(idx_parts), kind="stable")
    obs = np.concatenate(obs_parts)[order]
    act = np.concatenate(act_parts)[order] if has_act else None
    rew = np.concatenate(rew_parts)[order] if has_rew else None
    ep = np.concatenate(ep_parts)[order]
    if len(obs) == 0:
        raise UserError(f"{src / 'data'}: no frames")
    change = np.nonzero(np.diff(ep))[0] + 1
    ends = np.concatenate([change, [len(ep)]]).astype(np.int64)
    if len(np.unique(ep)) != len(ends):
        raise UserError(f"{src / 'data'}: the frames of an episode are not contiguous in 'index' order")
    if not np.isfinite(obs).all() or (act is not None and not np.isfinite(act).all()):
        raise UserError(f"{src / 'data'}: contains NaN or inf")
    obs_names = [n for k in obs_keys for n in _names(features[k], dims[k], k)]
    act_names = _names(features[ACTION], dims[ACTION], ACTION) if has_act else []
    extra = {}
    if (src / "meta" / "smiling_ros.json").is_file():
        extra = _read_json(src / "meta" / "smiling_ros.json")
        extra = extra if isinstance(extra, dict) else {}
    meta: dict[str, Any] = {
        "source": {"lerobot": str(src.resolve()), "codebase_version": version, "features": obs_keys
                   + ([ACTION] if has_act else [])},
        "task": str(extra.get("task", "")),
        "rate_hz": float(fps),
        "obs_names": obs_names,
        "act_names": act_names,
    }
    for k in ("fields", "action_spec", "topic_rates_hz"):
        if k in extra:
            meta[k] = extra[k]
    if has_act and "action_spec" not in meta and not all(n.startswith("action[") for n in act_names):
        meta["action_spec"] = {"joints": act_names, "meaning": "", "names": act_names}
    success = extra.get("success")
    if not (isinstance(success, list) and len(success) == len(ends) and all(isinstance(s, bool) for s in success)):
        success = None
    from smiling_ros.data.dataset import Dataset

    ds = Dataset(obs, act, ends, meta, None if success is None else np.asarray(success, bool), rew)
    ds.save(out)
    return ds
