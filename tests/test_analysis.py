"""vsd.analysis on unit-test fixture records (tests/test_analysis_fixture.py): collection, corrupt/partial
folders, CI math, aggregation, every plot, every table and the make_figures CLI. The same pieces on a real
tiny sweep: tests/test_analysis_real.py."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pandas as pd
import pytest

from tests.test_analysis_fixture import write_fake_sweep, write_run
from vsd.analysis import (
    aggregate,
    collect_prompts,
    collect_runs,
    collect_train_logs,
    make_figures,
    mean_ci,
    plots,
    tables,
    varying_keys,
)
from vsd.analysis.collect import method_label

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_sweep(tmp_path_factory.mktemp("runs"), seeds=SEEDS)


@pytest.fixture(scope="module")
def runs(sweep: Path) -> pd.DataFrame:
    return collect_runs(sweep)


def test_mean_ci_hand_case() -> None:
    # x = [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.302653 -> half-width 4.302653 / sqrt(3) = 2.484138
    mean, half, std, n = mean_ci([1.0, 2.0, 3.0])
    assert (mean, std, n) == (2.0, 1.0, 3)
    assert half == pytest.approx(2.484138, abs=1e-6)
    # 90% level: t_{0.95, 2} = 2.919986
    assert mean_ci([1.0, 2.0, 3.0], level=0.9)[1] == pytest.approx(2.919986 / math.sqrt(3), abs=1e-6)
    m1, h1, _, n1 = mean_ci([5.0, float("nan")])  # NaN ignored; one value has no spread
    assert (m1, n1) == (5.0, 1) and math.isnan(h1)


def test_collect_runs_columns_and_failed_kept(runs: pd.DataFrame) -> None:
    assert len(runs) == 11 * len(SEEDS) + 1
    for col in (
        "loss.num_samples",
        "loss.arw",
        "decoding.mode",
        "status",
        "seed",
        "git_sha",
        "error",
        "job_overrides",
        "sweep_dir",
        "eval/tau",
        "eval/alpha_3",
        "eval/math/tau",
        "method",
    ):
        assert col in runs.columns, col
    failed = runs[runs["status"] == "failed"]
    assert len(failed) == 1 and "synthetic failure" in failed["error"].iloc[0]
    assert failed["eval/tau"].isna().all()
    assert runs["train.betas"].iloc[0] == "[0.9, 0.95]"  # lists flattened to hashable JSON strings
    assert runs.attrs["problems"] == []
    assert set(varying_keys(runs)) == {
        "loss.name",
        "loss.num_samples",
        "loss.arw",
        "loss.car",
        "loss.oracle_filter",
        "loss.vsd_weight",
    }


def test_method_label() -> None:
    assert method_label({"loss.name": "eagle3", "loss.car": False}) == "EAGLE-3"
    assert method_label({"loss.name": "vsd", "loss.arw": True, "loss.car": True}) == "VSD"
    assert (
        method_label({"loss.name": "vsd", "loss.arw": False, "loss.oracle_filter": False})
        == "VSD −ARW −filter"
    )
    assert method_label({"loss.name": "eagle3", "decoding.drafter": "ngram"}) == "n-gram"


def test_corrupt_and_partial_folders_reported_and_skipped(tmp_path: Path) -> None:
    write_run(tmp_path / "good", seed=0)
    (tmp_path / "good" / "draft").mkdir()  # a checkpoint inside a run dir is not a partial run
    (tmp_path / "good" / "draft" / "config.json").write_text("{}")
    write_run(tmp_path / "bad_json", seed=1)
    (tmp_path / "bad_json" / "run.json").write_text("{not json")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")
    write_run(tmp_path / "no_metrics", seed=2)
    (tmp_path / "no_metrics" / "metrics.json").unlink()
    write_run(tmp_path / "torn_log", seed=3)
    with open(tmp_path / "torn_log" / "eval.jsonl", "a") as fh:
        fh.write('{"category": "ma')  # a half-written last line
    with pytest.warns(UserWarning) as rec:
        df = collect_runs(tmp_path)
    assert sorted(Path(p).name for p in df["run_dir"]) == ["good", "torn_log"]
    reasons = {Path(p.path).name: p.reason for p in df.attrs["problems"]}
    assert "corrupt run.json" in reasons["bad_json"]
    assert "no run.json" in reasons["partial"]
    assert "metrics.json" in reasons["no_metrics"]
    assert {Path(str(w.message).split(":")[0].removeprefix("skipped ")).name for w in rec} >= {
        "bad_json",
        "partial",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prompts = collect_prompts(tmp_path)
    assert len(prompts) == 6  # 3 rows per readable run; the torn line is skipped ...
    assert any("corrupt JSONL line" in p.reason for p in prompts.attrs["problems"])  # ... and reported


def test_collect_prompts_and_train_logs(sweep: Path, runs: pd.DataFrame) -> None:
    prompts = collect_prompts(sweep)
    completed = (runs["status"] == "completed").sum()
    assert len(prompts) == 3 * completed
    assert {
        "run_id",
        "method",
        "seed",
        "category",
        "spec.new_tokens",
        "ar.wall_s",
        "loss.num_samples",
    } <= set(prompts.columns)
    logs = collect_train_logs(sweep)
    assert len(logs) == 7 * completed and {"step", "train/loss", "train/sim_tau"} <= set(logs.columns)


def test_aggregate_over_seeds(runs: pd.DataFrame) -> None:
    agg = aggregate(runs, metrics=["eval/tau", "eval/speedup"])
    assert len(agg) == 11 and (agg["n_runs"] == len(SEEDS)).all()  # the failed run is not aggregated
    row = agg[agg["label"] == "VSD (S=16)"].iloc[0]
    raw = runs[(runs["loss.num_samples"] == 16) & (runs["status"] == "completed")]["eval/tau"]
    mean, half, _, _ = mean_ci(raw)
    assert row["eval/tau"] == pytest.approx(mean) and row["eval/tau.ci"] == pytest.approx(half)
    assert set(agg["label"]) >= {"EAGLE-3", "VSD (S=1)", "VSD −ARW −CAR −filter (S=4)"}
    by_s = aggregate(runs, by=["loss.num_samples"], metrics=["eval/tau"])
    assert list(by_s["loss.num_samples"]) == [1, 4, 16]


@pytest.fixture(scope="module")
def figures(runs: pd.DataFrame, sweep: Path) -> dict:
    logs = collect_train_logs(sweep)
    return {name: fn(runs if kind == "runs" else logs) for name, (kind, fn) in plots.FIGURES.items()}


@pytest.mark.parametrize("name", list(plots.FIGURES))
def test_each_plot_labelled_and_saved(figures: dict, name: str, tmp_path: Path) -> None:
    fig = figures[name]
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert any(ax.get_xlabel() for ax in axes) and any(ax.get_ylabel() for ax in axes)
    for ax in axes:
        if ax.get_xlabel() and "category" not in ax.get_xlabel():
            assert "(" in ax.get_xlabel(), f"{name}: x axis without units: {ax.get_xlabel()!r}"
    for p in plots.save_figure(fig, tmp_path, name):
        assert p.stat().st_size > 1000


def test_plot_without_data_raises_missing_data(runs: pd.DataFrame) -> None:
    eagle = runs[runs["loss.name"] == "eagle3"]
    for fn in (plots.plot_tau_vs_samples, plots.plot_ablation_grid):
        with pytest.raises(plots.MissingData):
            fn(eagle)
    with pytest.raises(plots.MissingData, match="train_log"):
        plots.plot_training_curves(pd.DataFrame())


def test_tables_markdown_latex_best_bold(runs: pd.DataFrame) -> None:
    main = tables.main_table(runs)
    md, tex = main.markdown(), main.latex()
    best = aggregate(runs, metrics=["eval/tau"]).sort_values("eval/tau").iloc[-1]
    first = md.splitlines()[4]  # caption, blank, header, rule, then the best row
    assert first.startswith(f"| {best['label']} |") and f"**{best['eval/tau']:.3f} ± " in first
    assert " ± " in md and md.count("|") > 20
    for tok in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{", r"$\pm$"):
        assert tok in tex
    assert "±" not in tex.replace(r"$\pm$", "") and "−" not in tex  # pdflatex-safe
    abl = tables.ablation_table(runs)
    lines = abl.markdown().splitlines()
    assert len(lines) == 4 + 1 + 8 and "EAGLE-3" in lines[4]  # header, EAGLE-3 reference, 8 grid cells
    assert "loss.num_samples=4" in abl.caption
    assert r"\checkmark" in abl.latex()


def test_make_figures_cli(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    only_eagle = tmp_path / "eagle"
    write_run(only_eagle / "0", loss="eagle3", seed=0)
    write_run(only_eagle / "1", loss="eagle3", seed=1)
    (only_eagle / "broken").mkdir()
    (only_eagle / "broken" / "run.json").write_text("")
    assert make_figures.main(["--runs", str(only_eagle), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "skipped tau_vs_samples" in out and "skipped ablation_grid" in out and "broken" in out
    assert (tmp_path / "out" / "method_bars.png").stat().st_size > 1000
    index = (tmp_path / "out" / "index.md").read_text()
    assert "main_table" in index and "Skipped" in index and "broken" in index
    assert make_figures.main(["--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 1
