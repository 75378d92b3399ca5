"""Issue 30's page on hand-made runs: the selection reads val only, the test verdict needs +5% with the
combined CI above zero, and every pre-declared arm without records is a "not run" row."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vsd.analysis import strong

N = 140


def _run(rows, turns, regime, arm, seed, split, T, fwd, rid=None):
    rid = rid or f"{regime}-{arm}-{seed}-{split}-{T}"
    new = np.full(N, 128)
    turns[rid] = pd.DataFrame({"key": [f"p{i}#0" for i in range(N)], "new": new, "fwd": fwd}).set_index("key")
    rows.append(
        {"run_id": rid, "regime": regime, "arm": arm, "seed": seed, "split": split, "T": T,
         "eval/tau": new.sum() / fwd.sum(), "git_sha": "abc"}
    )  # fmt: skip


def _df(gain_arm="vsd-a3", gain=0.10, val_best="vsd-a3"):
    """source: EAGLE-3 and the alpha family on val and test (3 seeds); ``gain_arm`` is ``gain`` faster on test;
    ``val_best`` wins on val. Nothing else ran."""
    rng = np.random.default_rng(0)
    base = rng.integers(60, 80, N)
    rows: list[dict] = []
    turns: dict[str, pd.DataFrame] = {}
    for s in range(3):
        noise = rng.integers(-1, 2, N)
        for split in ("val", "test"):
            _run(rows, turns, "source", "eagle3", s, split, 0.0, base + noise)
            for arm in strong.ALPHA:
                f = base + noise
                if split == "test" and arm == gain_arm:
                    f = np.round(f / (1 + gain)).astype(int)
                if split == "val" and arm == val_best:
                    f = f - 2
                _run(rows, turns, "source", arm, s, split, 0.0, f)
    return pd.DataFrame(rows), turns


def test_selection_reads_val_only_and_breaks_ties_to_the_smaller_alpha():
    df, _ = _df(gain_arm="vsd-a10", val_best="vsd-a3")
    assert strong.select_alpha(df, "source")[0] == "vsd-a3"  # a10 wins on test, but test is not read
    tie = df.copy()
    tie.loc[tie["split"] == "val", "eval/tau"] = 2.0
    pick, means = strong.select_alpha(tie, "source")
    assert pick == "vsd-a1" and set(means) == set(strong.ALPHA)
    assert strong.select_alpha(df, "sampled") == (None, {})  # no val records there
    assert strong.select_alpha(df[df["arm"] != "vsd-a3"], "source")[0] in ("vsd-a1", "vsd-a10")


def test_a_real_gain_passes_the_test_and_a_small_one_does_not():
    df, turns = _df(gain=0.10)
    rows = strong.comparisons(df, turns)
    c = next(r for r in rows if r["regime"] == "source" and r["a"] == "vsd-a3" and r["T"] == 0.0)
    assert c["ran"] and c["primary"] and c["rel"] > 0.05 and c["lo"] > 0 and strong.verdict(c) == "**yes**"
    df, turns = _df(gain=0.02)
    c = next(r for r in strong.comparisons(df, turns) if r["a"] == "vsd-a3" and r["T"] == 0.0)
    assert c["lo"] > 0 and strong.verdict(c) == "no"  # resolved, but below the +5% bar


def test_block_reports_every_declared_arm_and_marks_the_missing_ones_not_run():
    df, turns = _df()
    diag = pd.DataFrame(columns=["regime", "arm", "seed", *strong.VSD_DIAG])
    text = strong.render(df, turns, diag)
    assert (
        "Pre-declared test met (judged at the family's own temperature first): source VSD, L_M per token, α=3"
        in text
    )
    for name in (
        "VSD without L_EAGLE3",
        "EAGLE-3 + KL on own paths",
        "VSD, tree E-step",
        "EAGLE-3, half steps",
    ):
        assert f"| {name}" in text and "not run" in text.split(name, 1)[1].split("\n", 1)[0], name
    # sampled ran nothing: its selection says so, and each of its comparisons is "not run"
    assert "| sampled | not run | not run | not run | none (no val records) |" in text
    assert "| 1 | source | VSD, L_M per token, α=3 − EAGLE-3 (control) | – |  | not run |" in text
    assert "| 0 | sampled | EAGLE-3 + KL on own paths (α=0) − EAGLE-3 (control) | – |  | not run |" in text


def test_an_arm_is_compared_with_the_control_of_its_own_batch():
    """Two GPU sessions: the second reran EAGLE-3 (close, not bit-equal) beside a new arm. The new arm meets the
    second batch's control, the alpha arm its own batch's; the arms table lists EAGLE-3 once per batch and the
    seed variance pools within batches (duplicate seeds across batches are not one arm)."""
    df1, turns = _df(gain=0.10)
    df1["batch"] = "gpu"
    rng = np.random.default_rng(1)
    rows: list[dict] = []
    base = rng.integers(60, 80, N)
    for s in range(2):
        noise = rng.integers(-1, 2, N)
        _run(rows, turns, "source", "eagle3", s, "test", 0.0, base + noise, rid=f"b2-e3-{s}")
        _run(rows, turns, "source", "vsd-noe3", s, "test", 0.0, base + noise + 10, rid=f"b2-noe3-{s}")
    df2 = pd.DataFrame(rows).assign(batch="gpu2")
    df = pd.concat([df1, df2], ignore_index=True)
    rows = strong.comparisons(df, turns)
    noe3 = next(r for r in rows if r["a"] == "vsd-noe3" and r["T"] == 0.0 and r["regime"] == "source")
    a3 = next(r for r in rows if r["a"] == "vsd-a3" and r["T"] == 0.0 and r["regime"] == "source")
    assert noe3["batch"] == "gpu2" and noe3["n_b"] == 2 and noe3["rel"] < 0
    assert a3["batch"] == "gpu" and a3["n_b"] == 3 and strong.verdict(a3) == "**yes**"
    text = strong.render(
        df, turns, pd.DataFrame(columns=["regime", "arm", "seed", "batch", *strong.VSD_DIAG])
    )
    assert "in 2 batches (gpu, gpu2; comparisons within one)" in text
    e3 = [line for line in text.splitlines() if line.startswith("| 0 | source | EAGLE-3 (control) |")]
    assert [line.split(" | ")[3:5] for line in e3] == [["gpu", "0,1,2"], ["gpu2", "0,1"]]


def test_empty_records_render():
    text = strong.render(pd.DataFrame(), {}, pd.DataFrame(columns=["regime", "arm", "seed"]))
    assert "in no arm (0 of 7 comparisons ran)" in text


def test_the_drivers_rule_reads_val_records_only(tmp_path):
    """vsd.evaluation.selection (what scripts/run_strong.py applies, without pandas): val runs only, completed
    only, mean over seeds, ties to the first in order."""
    import json

    from vsd.evaluation.selection import mean_val_tau, pick_best

    def run(d, tau, split="val", status="completed"):
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"status": status}))
        (d / "config.json").write_text(json.dumps({"eval": {"split": split}}))
        (d / "metrics.json").write_text(json.dumps({"eval/tau": tau}))
        return d

    a = [run(tmp_path / "a0", 2.0), run(tmp_path / "a1", 3.0), run(tmp_path / "a2", 9.0, status="failed")]
    b = [run(tmp_path / "b0", 2.5), run(tmp_path / "b1", 9.0, split="test")]
    assert mean_val_tau(a) == 2.5 and mean_val_tau(b) == 2.5 and mean_val_tau([tmp_path / "none"]) is None
    assert (
        pick_best({"a": 2.5, "b": 2.5}, ("a", "b")) == "a"
        and pick_best({"a": 2.5, "b": 2.6}, ("a", "b")) == "b"
    )
    assert pick_best({}, ("a",)) is None and pick_best({"c": 9.0}, ("a", "b")) is None
