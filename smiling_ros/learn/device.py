"""Torch device selection: CUDA where present, CPU otherwise."""
from __future__ import annotations

import torch

from smiling_ros.errors import UserError


def select_device(requested: str | None = "auto") -> torch.device:
    """Return the torch device for ``requested`` ('auto', 'cpu', 'cuda', 'cuda:N')."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError as exc:
        raise UserError(f"device: '{requested}' is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: '{requested}' requested but CUDA is not available on this machine")
    return dev
