"""Where the package's data (config/, sim/, launch/) lives: a source checkout, a pip install or
a colcon install (share/smiling_ros)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def share_dir(sub: str = "") -> Path:
    """Directory ``sub`` (config, sim, launch) of the installed or checked-out package."""
    candidates = []
    if os.environ.get("SMILING_ROS_SHARE"):
        candidates.append(Path(os.environ["SMILING_ROS_SHARE"]))
    candidates.append(_REPO)  # source checkout / editable install
    try:  # colcon install
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("smiling_ros")))
    except Exception:  # noqa: BLE001 - ament index absent or package not in it
        pass
    candidates.append(Path(sys.prefix) / "share" / "smiling_ros")  # pip install
    for base in candidates:
        if (base / sub).is_dir():
            return base / sub
    return candidates[0] / sub
