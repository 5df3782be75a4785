"""Checks of imported demonstrations that do not stop an import but deserve a warning.

Each finding is a :class:`Finding` with a stable ``name`` (for scripts and tests) and one line
for people:

- ``obs-echoes-action``: an observation column follows an action column (|Pearson r| above
  :data:`ECHO_CORR` at lag 0, ``obs[k]`` vs ``act[k]``, or lag 1, ``obs[k+1]`` vs ``act[k]``,
  within episodes). A policy can then copy the last command instead of reacting to the state
  (e.g. joint velocities observed beside velocity commands).
- ``constant-observation``: an observation column never changes (it carries no information,
  and normalisation divides by a floored std).
- ``stamps-not-monotonic`` / ``stamps-duplicated``: per topic, header stamps going backwards or
  repeating the previous one (counts); the same for receive times.
- ``rate-below-dataset``: a topic arrives slower than the dataset rate (its values are repeated
  on several consecutive rows).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

ECHO_CORR = 0.99
RATE_SLACK = 0.9  # a topic below this fraction of the dataset rate is reported


@dataclass
class Finding:
    name: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"warning [{self.name}]: {self.message}"


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns z-scored; returns (z, varying) where constant columns are zero and flagged False."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    std = x.std(0)
    varying = std > 1e-12 * np.maximum(1.0, np.abs(mean))
    z = np.where(varying, (x - mean) / np.where(varying, std, 1.0), 0.0)
    return z, varying


def lagged_pairs(episode_ends: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (i, i + lag) with both rows in the same episode."""
    starts = np.concatenate([[0], episode_ends[:-1]])
    a = [np.arange(s, e - lag) for s, e in zip(starts, episode_ends) if e - s > lag]
    i = np.concatenate(a) if a else np.zeros(0, np.int64)
    return i, i + lag


def echo_findings(obs: np.ndarray, act: Optional[np.ndarray], episode_ends: np.ndarray,
                  obs_names: Sequence[str], act_names: Sequence[str], limit: float = ECHO_CORR) -> list[Finding]:
    """``obs-echoes-action`` findings: one per observation column, naming the action column and
    lag with the strongest correlation above ``limit``."""
    if act is None or len(obs) < 3:
        return []
    ends = np.asarray(episode_ends, np.int64)
    best: dict[int, tuple[float, int, int]] = {}
    for lag in (0, 1):
        i, j = lagged_pairs(ends, lag)
        if len(i) < 3:
            continue
        zo, vo = _standardise(obs[j])
        za, va = _standardise(act[i])
        corr = np.abs(zo.T @ za) / len(i)  # (obs_dim, act_dim)
        corr[~vo, :] = 0.0
        corr[:, ~va] = 0.0
        for o, a in zip(*np.nonzero(corr > limit)):
            c = float(corr[o, a])
            if o not in best or c > best[o][0]:
                best[int(o)] = (c, int(a), lag)
    out = []
    for o in sorted(best):
        c, a, lag = best[o]
        on = obs_names[o] if o < len(obs_names) else f"obs[{o}]"
        an = act_names[a] if a < len(act_names) else f"act[{a}]"
        at = "the same step" if lag == 0 else "the next step"
        out.append(Finding("obs-echoes-action",
                           f"observation {on} follows action {an} (|r| = {c:.4f} at {at}): a policy can copy "
                           "the last command instead of reacting to the state; consider leaving it out"))
    return out


def constant_findings(obs: np.ndarray, obs_names: Sequence[str]) -> list[Finding]:
    """One ``constant-observation`` finding listing the observation columns that never change."""
    if len(obs) == 0:
        return []
    const = np.nonzero((obs.max(0) - obs.min(0)) == 0)[0]
    if not len(const):
        return []
    names = [obs_names[i] if i < len(obs_names) else f"obs[{i}]" for i in (int(c) for c in const)]
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return [Finding("constant-observation", f"observation column(s) never change: {shown}")]


def stamp_counts(times: np.ndarray) -> tuple[int, int]:
    """(steps backwards, repeats of the previous value) in a sequence of stamps."""
    t = np.asarray(times, np.int64)
    if len(t) < 2:
        return 0, 0
    d = np.diff(t)
    return int((d < 0).sum()), int((d == 0).sum())


def stamp_findings(header: dict[str, np.ndarray], receive: dict[str, np.ndarray]) -> list[Finding]:
    """``stamps-not-monotonic`` / ``stamps-duplicated`` per topic, for header stamps (in
    message order) and receive times."""
    out = []
    for kind, series in (("header stamps", header), ("receive times", receive)):
        for topic in sorted(series):
            back, dup = stamp_counts(series[topic])
            n = len(series[topic])
            if back:
                out.append(Finding("stamps-not-monotonic", f"topic '{topic}': {back} of {n} {kind} go backwards"))
            if dup:
                out.append(Finding("stamps-duplicated", f"topic '{topic}': {dup} of {n} {kind} repeat the previous one"))
    return out


def effective_rate_hz(times: np.ndarray, gap_ns: Optional[float] = None) -> Optional[float]:
    """A topic's rate [Hz]: one over the median interval between messages (intervals longer
    than ``gap_ns`` left out), None with fewer than 2 distinct stamps."""
    t = np.asarray(times, np.int64)
    if len(t) < 2:
        return None
    d = np.diff(np.sort(t)).astype(np.float64)
    d = d[d > 0]
    if gap_ns is not None:
        d = d[d <= float(gap_ns)]
    if not len(d):
        return None
    return float(1e9 / float(np.median(d)))


def rate_findings(rates: dict[str, Optional[float]], dataset_rate: float, roles: dict[str, str]) -> list[Finding]:
    """``rate-below-dataset`` for every topic whose rate is below the dataset rate (with slack)."""
    out = []
    for topic in sorted(rates):
        r = rates[topic]
        if r is not None and r < RATE_SLACK * dataset_rate:
            out.append(Finding("rate-below-dataset",
                               f"{roles.get(topic, 'topic')} topic '{topic}' arrives at {r:.3g} Hz, below the dataset "
                               f"rate {dataset_rate:g} Hz: each of its values is repeated on about "
                               f"{dataset_rate / r:.1f} rows"))
    return out
