"""`smiling-ros train-dac --config CFG --dataset DIR --out RUN_DIR`: the DAC baseline on SMILING's
loop (same SAC, demos, seeds, env steps; options in smiling.dac)."""
from __future__ import annotations

import argparse

from smiling_ros.commands.train_smiling import add_arguments as _add


def add_arguments(p: argparse.ArgumentParser) -> None:
    _add(p)


def run(args) -> int:
    from smiling_ros.commands.train_smiling import run_method

    return run_method(args, "dac")
