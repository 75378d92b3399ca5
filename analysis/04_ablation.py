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
# # VSD ablation grid: ARW × CAR × oracle filter
# Records: `VSD_RUNS` (env var, default `multirun`); figures go to `VSD_FIGURES` (default `analysis/figures`).
# No metric logic here: everything is computed by `vsd.analysis` (docs/analysis.md).

# %%
import os

from vsd.analysis import collect_runs, collect_train_logs, plots, tables  # noqa: F401

RUNS = os.environ.get("VSD_RUNS", "multirun")
OUT = os.environ.get("VSD_FIGURES", "analysis/figures")
runs = collect_runs(RUNS)
fig = plots.plot_ablation_grid(runs)
plots.save_figure(fig, OUT, "ablation_grid", close=False)

# %%
table = tables.ablation_table(runs)
table.save(OUT, "ablation_table")
print(table.markdown())
