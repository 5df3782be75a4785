"""`smiling-ros <verb>`: everything a node does, without ROS.

Each verb lives in ``smiling_ros/commands/<verb>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their verb runs, so ``--help`` is fast.
Bad input raises :class:`~smiling_ros.errors.UserError`, printed here as one line.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

VERBS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "the main job end to end on the embedded default task"),
    "record-demos": ("record_demos", "record scripted-expert demonstrations over ROS 2 into a bag"),
    "import-bag": ("import_bag", "turn any rosbag2 (dir, .mcap, .db3) into a dataset"),
    "export-lerobot": ("export_lerobot", "write a dataset as a LeRobotDataset v3 directory"),
    "import-lerobot": ("import_lerobot", "read a local LeRobotDataset v3 (state and action features) into a dataset"),
    "train-expert": ("train_expert", "train an expert with SAC on the true reward"),
    "rollout": ("rollout", "roll out a policy or expert in simulation into a dataset or bag"),
    "train-smiling": ("train_smiling", "learn a policy from demonstrations with SMILING"),
    "train-bc": ("train_bc", "behavioural cloning baseline"),
    "train-dac": ("train_dac", "DAC (adversarial imitation) baseline"),
    "train-bridger": ("train_bridger", "train a BRIDGER action refiner from a dataset and a source"),
    "train-dbc": ("train_dbc", "diffusion-model-augmented behavioural cloning"),
    "train-dydiff": ("train_dydiff", "diffusion world model for offline RL and SMILING without a simulator"),
    "eval": ("eval", "evaluate a checkpoint: returns, success rate, normalised return"),
    "announce": ("announce", "hand a checkpoint to running controllers (hot swap), also on another machine"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smiling-ros", description="Robot demonstrations to deployed diffusion policies.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_) in VERBS.items():
        sub.add_parser(verb, help=help_, add_help=False)
    return p


class _OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line (``smiling-ros VERB: error: ...``), exit status 2, like every
    other bad input; ``--help`` shows the usage."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def _version() -> str:
    from smiling_ros import __version__

    return f"smiling-ros {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from smiling_ros.learn.runtime import limit_threads

    limit_threads()
    top = _parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        if argv and argv[0] not in ("-h", "--help", "--version"):
            top.print_usage(sys.stderr)
            print(f"smiling-ros: error: unknown verb '{argv[0]}' (verbs: {', '.join(VERBS)})", file=sys.stderr)
            return 2
        top.parse_args(argv or ["--help"])
        return 0
    verb, rest = argv[0], argv[1:]
    modname, help_ = VERBS[verb]
    from smiling_ros.errors import UserError

    try:
        mod = importlib.import_module(f"smiling_ros.commands.{modname}")
    except ModuleNotFoundError as exc:
        if exc.name == f"smiling_ros.commands.{modname}":
            print(f"smiling-ros: error: verb '{verb}' is not available in this version", file=sys.stderr)
            return 2
        raise
    parser = _OneLineParser(prog=f"smiling-ros {verb}", description=help_)
    mod.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        check_integers(args)
        return int(mod.run(args) or 0)
    except UserError as exc:
        print(f"smiling-ros {verb}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"smiling-ros {verb}: interrupted", file=sys.stderr)
        return 130
    # Last resort: errors that were not turned into a UserError where they happened are still one
    # line (the place to fix is where the input enters; SMILING_ROS_TRACEBACK=1 shows the traceback).
    except OSError as exc:
        if os.environ.get("SMILING_ROS_TRACEBACK"):
            raise
        from smiling_ros.io.outputs import os_error

        print(f"smiling-ros {verb}: error: {os_error(exc, exc.filename or '', 'read or write')}", file=sys.stderr)
        return 2
    except (MemoryError, RecursionError, OverflowError) as exc:
        if os.environ.get("SMILING_ROS_TRACEBACK"):
            raise
        print(f"smiling-ros {verb}: error: input too large or too deeply nested ({type(exc).__name__}: "
              f"{' '.join(str(exc).split())[:200]})", file=sys.stderr)
        return 2


SEED_RANGE = (0, 2**32)


def check_integers(args: argparse.Namespace) -> None:
    """Every integer option within the range it is used in: seeds in numpy's [0, 2^32), the
    others in int64."""
    from smiling_ros.errors import UserError

    for name, value in vars(args).items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        flag = "--" + name.replace("_", "-")
        lo, hi = SEED_RANGE if name == "seed" or name.endswith("_seed") else (-(2**63), 2**63)
        if name == "seed" and value < 0:
            raise UserError(f"--seed: must be >= 0, got {value}")
        if not lo <= value < hi:
            raise UserError(f"{flag}: must be >= {lo} and < {hi}, got {value}")


if __name__ == "__main__":
    sys.exit(main())
