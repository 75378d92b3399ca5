"""Analysis of run records: collect (tidy DataFrames), aggregate (mean ± 95% CI over seeds), plots, tables.

    from vsd.analysis import collect_runs, aggregate, plots, tables
    runs = collect_runs("multirun/2025-01-01_00-00-00")
    fig = plots.plot_tau_vs_samples(runs)

``python -m vsd.analysis.make_figures --runs DIR --out DIR`` regenerates every figure and table (docs/analysis.md).
"""

from vsd.analysis.aggregate import aggregate, aggregate_long, mean_ci, varying_keys
from vsd.analysis.collect import (
    Problem,
    collect_prompts,
    collect_runs,
    collect_train_logs,
    collect_wandb,
    find_run_dirs,
    method_label,
)

__all__ = [
    "Problem",
    "aggregate",
    "aggregate_long",
    "collect_prompts",
    "collect_runs",
    "collect_train_logs",
    "collect_wandb",
    "find_run_dirs",
    "mean_ci",
    "method_label",
    "varying_keys",
]
