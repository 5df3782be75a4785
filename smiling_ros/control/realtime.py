"""Real-time scheduling of the control thread and its helpers (SCHED_FIFO)."""
from __future__ import annotations

from typing import Optional


# --------------------------------------------------------------------------- scheduling
def set_sched_priority(priority: int) -> Optional[str]:
    """Run the calling thread (and threads it starts later) under SCHED_FIFO at ``priority``
    (1..99), or back under normal scheduling with 0. Returns a warning line if refused."""
    import os

    if not hasattr(os, "sched_setscheduler"):
        return "sched_priority: real-time scheduling is not available on this system; running normally"
    try:
        if priority > 0:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(priority)))
        elif os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (PermissionError, OSError) as exc:
        return (f"sched_priority {priority}: refused by the system ({exc.strerror or exc}); running with normal "
                "scheduling (grant CAP_SYS_NICE or an rtprio limit)")
    return None


def background_priority() -> None:
    """For a helper thread of a SCHED_FIFO control loop: one FIFO priority below it.

    Still above every normally scheduled process, so the helper is not preempted by them while it
    holds Python's GIL (which would leave the control thread waiting: priority inversion), yet
    the kernel runs the control thread first whenever both are ready."""
    import os

    if not hasattr(os, "sched_getscheduler"):
        return
    try:
        if os.sched_getscheduler(0) == os.SCHED_FIFO:
            prio = os.sched_getparam(0).sched_priority
            if prio > 1:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio - 1))
    except OSError:
        pass
