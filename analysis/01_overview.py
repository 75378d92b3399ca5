# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Overview: every run, failures, and the main comparison table
# Records: `VSD_RUNS` (env var, default `multirun`); figures go to `VSD_FIGURES` (default `analysis/figures`).
# No metric logic here: everything is computed by `vsd.analysis` (docs/analysis.md).

# %%
import os

from vsd.analysis import collect_runs, collect_train_logs, plots, tables  # noqa: F401

RUNS = os.environ.get("VSD_RUNS", "multirun")
OUT = os.environ.get("VSD_FIGURES", "analysis/figures")
runs = collect_runs(RUNS)
print(f"{len(runs)} runs; problems: {[str(p) for p in runs.attrs['problems']]}")
runs[["run_id", "method", "seed", "status", "error"]]

# %%
from vsd.analysis import aggregate  # noqa: E402

aggregate(runs, metrics=["eval/tau", "eval/speedup", "eval/tokens_per_s"])

# %%
table = tables.main_table(runs)
table.save(OUT, "main_table")
print(table.markdown())

# %%
fig = plots.plot_method_bars(runs)
plots.save_figure(fig, OUT, "method_bars", close=False)
