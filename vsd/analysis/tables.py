"""Paper tables from run records: the main comparison and the VSD ablation grid, as Markdown and LaTeX
(booktabs). Cells are "mean ± 95% CI half-width" over seeds (vsd.analysis.aggregate); the best mean of each
metric column is bold (every tie included; lower is better only for losses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vsd.analysis.aggregate import ABLATION_FLAGS, ablation_subset, aggregate
from vsd.analysis.plots import MissingData

MAIN_METRICS = ("eval/tau", "eval/speedup", "eval/tokens_per_s", "eval/lossless_match", "train/sim_tau")
ABLATION_METRICS = ("eval/tau", "eval/speedup", "train/sim_tau")
HEADERS = {
    "eval/tau": ("τ (tok/fwd)", r"$\tau$ (tok/fwd)"),
    "eval/speedup": ("speedup (×)", r"speedup ($\times$)"),
    "eval/tokens_per_s": ("tokens/s", "tokens/s"),
    "eval/lossless_match": ("lossless match", "lossless match"),
    "train/sim_tau": ("sim. τ", r"sim.\ $\tau$"),
    "train/loss": ("train loss (nats)", "train loss (nats)"),
}
DIGITS = {"eval/tokens_per_s": 1, "eval/lossless_match": 2}


@dataclass
class Cell:
    mean: float
    ci: float = math.nan
    digits: int = 3
    bold: bool = False

    def text(self, latex: bool) -> str:
        if math.isnan(self.mean):
            return "–"
        s = f"{self.mean:.{self.digits}f}"
        if not math.isnan(self.ci):
            s += (r" $\pm$ " if latex else " ± ") + f"{self.ci:.{self.digits}f}"
        if self.bold:
            s = rf"\textbf{{{s}}}" if latex else f"**{s}**"
        return s


@dataclass
class Table:
    """Header labels (Markdown, LaTeX) and rows of plain strings or :class:`Cell`s."""

    columns: list[tuple[str, str]]
    rows: list[list[str | Cell]] = field(default_factory=list)
    caption: str = ""

    def markdown(self) -> str:
        head = [c[0] for c in self.columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
        for r in self.rows:
            lines.append(
                "| " + " | ".join(c.text(False) if isinstance(c, Cell) else str(c) for c in r) + " |"
            )
        text = "\n".join(lines) + "\n"
        return (f"{self.caption}\n\n" if self.caption else "") + text

    def latex(self) -> str:
        def esc(s: str) -> str:
            # pdflatex-safe: no raw unicode symbols (\checkmark needs amssymb).
            for u, t in (
                ("_", r"\_"),
                ("%", r"\%"),
                ("&", r"\&"),
                ("−", "$-$"),
                ("±", r"$\pm$"),
                ("×", r"$\times$"),
                ("✓", r"\checkmark"),
                ("✗", "--"),
                ("τ", r"$\tau$"),
            ):
                s = s.replace(u, t)
            return s

        lines = [r"\begin{table}[t]", r"\centering"]
        if self.caption:
            lines.append(rf"\caption{{{esc(self.caption)}}}")
        lines += [rf"\begin{{tabular}}{{l{'r' * (len(self.columns) - 1)}}}", r"\toprule"]
        lines.append(" & ".join(c[1] for c in self.columns) + r" \\")
        lines.append(r"\midrule")
        for r in self.rows:
            lines.append(" & ".join(c.text(True) if isinstance(c, Cell) else esc(str(c)) for c in r) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path, name: str) -> list[Path]:
        """Write ``<name>.md`` and ``<name>.tex``; returns both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{name}.md", out / f"{name}.tex"]
        paths[0].write_text(self.markdown())
        paths[1].write_text(self.latex())
        return paths


def _cells(agg: pd.DataFrame, metrics: Sequence[str]) -> list[list[Cell]]:
    """Mean ± CI cells per row of ``agg``, the best of each column bold."""
    cols = []
    for m in metrics:
        col = [Cell(float(r[m]), float(r[f"{m}.ci"]), DIGITS.get(m, 3)) for _, r in agg.iterrows()]
        vals = [c.mean for c in col if not math.isnan(c.mean)]
        if vals:
            best = min(vals) if "loss" in m else max(vals)
            for c in col:
                c.bold = not math.isnan(c.mean) and round(c.mean, c.digits) == round(best, c.digits)
        cols.append(col)
    return [list(r) for r in zip(*cols)]


def _present(runs: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    return [m for m in metrics if m in runs and runs[m].notna().any()]


def main_table(runs: pd.DataFrame, metrics: Sequence[str] = MAIN_METRICS) -> Table:
    """One row per condition (method + swept keys, the seeds pooled), best first by the first metric."""
    done = runs[runs["status"] == "completed"] if "status" in runs else runs
    metrics = _present(done, metrics)
    if not len(done) or not metrics:
        raise MissingData("main table: no completed run with eval/tau or eval/speedup")
    agg = aggregate(done, metrics=metrics).sort_values(metrics[0], ascending=False, ignore_index=True)
    cols = [("method", "method"), ("seeds", "seeds")] + [HEADERS.get(m, (m, m)) for m in metrics]
    rows = [
        [r["label"], str(r["n_runs"]), *cells] for (_, r), cells in zip(agg.iterrows(), _cells(agg, metrics))
    ]
    return Table(cols, rows, "Main comparison: mean ± 95% CI over seeds; best in bold.")


def ablation_table(runs: pd.DataFrame, metrics: Sequence[str] = ABLATION_METRICS) -> Table:
    """VSD's ARW × CAR × oracle-filter grid (✓ on, ✗ off), EAGLE-3 as the first row for reference."""
    vsd, held = ablation_subset(runs)
    metrics = _present(vsd, metrics)
    if not len(vsd) or vsd[list(ABLATION_FLAGS)].drop_duplicates().shape[0] < 2 or not metrics:
        raise MissingData("ablation table: needs VSD runs at two or more ARW/CAR/oracle-filter settings")
    agg = aggregate(vsd, by=list(ABLATION_FLAGS), metrics=metrics)
    done = runs[runs["status"] == "completed"]
    base = aggregate(done[done["loss.name"] == "eagle3"], by=[], metrics=metrics)
    both = pd.concat([base, agg], ignore_index=True) if len(base) else agg
    cells = _cells(both, metrics)
    cols = [("ARW", "ARW"), ("CAR", "CAR"), ("oracle filter", "oracle filter"), ("seeds", "seeds")]
    cols += [HEADERS.get(m, (m, m)) for m in metrics]
    rows: list[list[str | Cell]] = []
    for (_, r), c in zip(both.iterrows(), cells):
        flags = (
            ["EAGLE-3", "", ""]
            if r.get("loss.arw") is None or pd.isna(r.get("loss.arw"))
            else ["✓" if r[f] else "✗" for f in ABLATION_FLAGS]
        )
        rows.append([*flags, str(r["n_runs"]), *c])
    caption = "VSD ablation (ARW × CAR × oracle filter): mean ± 95% CI over seeds; best in bold."
    if held:
        caption += f" Held fixed: {', '.join(held)}."
    return Table(cols, rows, caption)


TABLES = {"main_table": main_table, "ablation_table": ablation_table}
