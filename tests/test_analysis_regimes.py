"""The regime page's comparisons on hand-made runs: a known difference is found, no difference is not."""

import numpy as np
import pandas as pd

from vsd.analysis.regimes import compare, pooled_seed_var


def _turns(new, fwd):
    return pd.DataFrame({"key": [f"p{i}#0" for i in range(len(new))], "new": new, "fwd": fwd}).set_index(
        "key"
    )


def test_compare_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    n = 120
    new = np.full(n, 128)
    fwd_b = rng.integers(60, 80, n)  # tau around 1.8
    turns = {"b0": _turns(new, fwd_b), "a0": _turns(new, fwd_b - 4), "c0": _turns(new, fwd_b)}
    runs = lambda rid, tau: pd.DataFrame({"run_id": [rid], "seed": [0], "eval/tau": [tau]})  # noqa: E731
    tau = {k: new.sum() / t["fwd"].sum() for k, t in turns.items()}
    a = compare(None, turns, runs("a0", tau["a0"]), runs("b0", tau["b0"]), 1e-6, np.random.default_rng(0))
    assert a["diff"] > 0 and a["prompt_lo"] > 0 and a["lo"] > 0 and a["turns"] == n
    c = compare(None, turns, runs("c0", tau["c0"]), runs("b0", tau["b0"]), 1e-6, np.random.default_rng(0))
    assert c["diff"] == 0 and c["prompt_lo"] <= 0 <= c["prompt_hi"]
    # a large seed variance widens the combined interval, not the by-prompt one
    w = compare(None, turns, runs("a0", tau["a0"]), runs("b0", tau["b0"]), 0.01, np.random.default_rng(0))
    assert w["prompt_lo"] == a["prompt_lo"] and w["lo"] < 0 < w["hi"]


def test_pooled_seed_variance_uses_arms_with_several_seeds():
    df = pd.DataFrame(
        {
            "regime": ["r"] * 5,
            "T": [0.0] * 5,
            "arm": ["vsd", "vsd", "vsd", "eagle3", "base"],
            "eval/tau": [1.0, 1.2, 1.1, 5.0, 9.0],
        }
    )
    var, dof = pooled_seed_var(df)
    assert dof == 2 and abs(var - 0.01) < 1e-12


def test_pooled_seed_variance_by_temperature():
    """T=1 comparisons get the T=1 arms' seed variance (decoding noise included), not the T=0 one."""
    df = pd.DataFrame(
        {
            "regime": ["r"] * 6,
            "T": [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            "arm": ["vsd"] * 6,
            "eval/tau": [1.0, 1.2, 1.1, 1.0, 1.4, 1.2],
        }
    )
    assert abs(pooled_seed_var(df, 0.0)[0] - 0.01) < 1e-12 and abs(pooled_seed_var(df, 1.0)[0] - 0.04) < 1e-12
    assert pooled_seed_var(df)[1] == 4


def test_a_page_without_vsd_runs_renders(tmp_path):
    """The regime page from records that hold no VSD run yet (a reproduction still training): the arms and the
    EAGLE-3 − base row, no diagnostics rows (it raised KeyError on the empty diagnostics)."""
    import shutil
    from pathlib import Path

    from vsd.analysis import keep, regimes

    part = Path(__file__).resolve().parents[1] / "docs" / "records" / "regimes" / "gpu" / "source"
    assert keep.main(["--expand", str(part), str(tmp_path / "raw")]) == 0
    for arm in ("vsd", "vsd_token", "eagle3_time", "power"):
        shutil.rmtree(tmp_path / "raw" / arm)
    assert keep.main([str(tmp_path / "raw"), str(tmp_path / "kept" / "source")]) == 0
    page = tmp_path / "page.md"
    page.write_text("<!-- generated:regimes:begin -->\n<!-- generated:regimes:end -->\n")
    args = ["--runs", str(tmp_path / "kept"), "--page", str(page), "--figures", str(tmp_path / "fig")]
    assert regimes.main([*args, "--block", "regimes"]) == 0
    text = page.read_text()
    assert "| 0 | source | EAGLE-3 − base (the arms' 400 steps) |" in text and "VSD − EAGLE-3" not in text


def test_diagnostics_read_raw_run_folders(tmp_path):
    """From raw folders (a run just made, not compacted): the T=1 evals of a VSD arm are runs with its name and
    no train_log.jsonl; they are skipped, not a FileNotFoundError."""
    from pathlib import Path

    from vsd.analysis import keep, regimes

    part = Path(__file__).resolve().parents[1] / "docs" / "records" / "regimes" / "gpu" / "tree"
    assert keep.main(["--expand", str(part), str(tmp_path / "raw" / "tree")]) == 0
    assert (tmp_path / "raw" / "tree" / "vsd" / "seed0" / "t1" / "run.json").is_file()
    diag = regimes.vsd_diagnostics([tmp_path / "raw"])
    assert sorted(diag["seed"]) == [0, 1, 2] and set(diag["arm"]) == {"vsd"}
