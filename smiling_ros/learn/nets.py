"""The one MLP builder and activation table every method's networks use.

``mlp([in, h1, ..., out], "relu")`` is Linear layers with the activation between them (none after
the last, unless ``final_activation``). :func:`np_activation` gives the same maths in numpy for the
per-observation numpy forward passes (BRIDGER's deployed sampler).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from torch import nn

from smiling_ros.errors import UserError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "silu": nn.SiLU, "mish": nn.Mish, "elu": nn.ELU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU,
}


def check_activation(name: str, where: str = "activation") -> None:
    """One-line error naming ``where`` for an activation outside :data:`ACTIVATIONS`."""
    if name not in ACTIVATIONS:
        raise UserError(f"{where}: unknown activation '{name}' (known: {', '.join(ACTIVATIONS)})")


def mlp(sizes: Sequence[int], activation: str = "relu", out_activation: Optional[nn.Module] = None,
        final_activation: bool = False) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` between them; ``final_activation`` adds it after
    the last layer too (a trunk that feeds heads), ``out_activation`` appends a given module."""
    check_activation(activation)
    act = ACTIVATIONS[activation]
    if len(sizes) > 1000:
        raise ValueError(f"{len(sizes)} layer sizes: not a plausible network")
    mods: list[nn.Module] = []
    n = len(sizes) - 1
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Linear(int(a), int(b)))
        if i < n - 1 or final_activation:
            mods.append(act())
    if out_activation is not None:
        mods.append(out_activation)
    return nn.Sequential(*mods)


def np_activation(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """numpy version of ``ACTIVATIONS[name]`` (same maths, float32 in, float32 out)."""
    table: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "silu": lambda h: h / (1.0 + np.exp(-h)),
        "relu": lambda h: np.maximum(h, 0.0),
        "elu": lambda h: np.where(h > 0, h, np.expm1(np.minimum(h, 0.0))),
        "tanh": np.tanh,
        "mish": lambda h: h * np.tanh(np.logaddexp(0.0, h)),
        "leaky_relu": lambda h: np.where(h > 0, h, 0.01 * h),
    }
    check_activation(name)
    return table[name]
