"""Pre-declared choices among settings, made from val-split eval records only (docs/results.md, "Strong base").

No pandas: scripts/run_strong.py applies the rule on the GPU machine to pick which arm gets its T=1 test evals,
and vsd.analysis.strong applies the same function to the records when it writes the page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path


def pick_best(means: dict[str, float], order: Sequence[str]) -> str | None:
    """The setting with the highest mean val tau; a tie goes to the one first in ``order`` (the smaller alpha);
    a setting without a (finite) mean is no candidate; None when none has one."""
    cands = [k for k in order if k in means and math.isfinite(means[k])]
    if not cands:
        return None
    best = max(means[k] for k in cands)
    return next(k for k in cands if means[k] == best)


def val_tau(run_dir: Path) -> float | None:
    """eval/tau of a completed val-split run at ``run_dir`` (its run.json, config.json and metrics.json); None
    when it is not there, not completed or not a val-split run."""
    try:
        run = json.loads((run_dir / "run.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if run.get("status") != "completed" or (config.get("eval") or {}).get("split") != "val":
        return None
    tau = metrics.get("eval/tau")
    return float(tau) if isinstance(tau, (int, float)) else None


def mean_val_tau(run_dirs: Iterable[Path]) -> float | None:
    """The mean of :func:`val_tau` over the runs that have one; None when none has."""
    taus = [t for t in map(val_tau, run_dirs) if t is not None]
    return sum(taus) / len(taus) if taus else None
