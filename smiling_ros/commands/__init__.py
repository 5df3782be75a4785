"""CLI verbs: one module each, with ``add_arguments(parser)`` and ``run(args) -> int`` (listed in
``cli.VERBS``). The helpers below are shared by the offline training verbs."""
from __future__ import annotations

import argparse
from typing import Any


def add_offline_arguments(p: argparse.ArgumentParser, out_help: str, extra: Any = None) -> None:
    """``--config``, ``--dataset``, ``--out`` (``out_help``), the verb's own (``extra(p)``), then ``--seed``,
    ``--quiet`` and ``--overwrite``, as every offline training verb takes them."""
    from smiling_ros.io.outputs import add_overwrite_argument

    p.add_argument("--config", required=True, help="task config (YAML path or shipped name)")
    p.add_argument("--dataset", required=True, help="dataset directory with actions (from import-bag or rollout)")
    p.add_argument("--out", required=True, help=out_help)
    if extra is not None:
        extra(p)
    p.add_argument("--seed", type=int, default=None, help="random seed (default: config seed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_overwrite_argument(p)


def offline_inputs(args: argparse.Namespace, cls: type, name: str, overrides: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(config, its section ``name`` as ``cls`` with the command line's ``overrides``, the dataset), checked
    before anything is written: the section's ranges, actions present, the dataset's task and the bounds."""
    import dataclasses

    from smiling_ros.config import load_config
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.learn.common import offline_inputs as check

    cfg = load_config(args.config)
    section: Any = dataclasses.replace(cfg.section(cls, name), **{k: v for k, v in overrides.items() if v is not None})
    section.validate("command line")
    ds = Dataset.load(args.dataset)
    episodes = getattr(args, "episodes", None)
    if episodes is not None:
        from smiling_ros.errors import UserError

        if episodes < 1:
            raise UserError(f"--episodes: must be >= 1, got {episodes}")
        ds = ds.subset(episodes)
    check(cfg, ds, f"train-{name}", args.seed)
    return cfg, section, ds
