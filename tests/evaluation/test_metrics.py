"""The one metrics function on hand-made raw rows, against hand-computed tau / speedup / alpha."""

from __future__ import annotations

import math

import pytest

from vsd.evaluation.metrics import alpha_by_depth, compute_metrics


def _rows():
    # Two math turns, one coding turn. Spec: depth-3 chain drafts.
    return [
        {
            "category": "math",
            "ar": {"new_tokens": 10, "target_forwards": 10, "wall_s": 1.0},
            "spec": {
                "new_tokens": 10,
                "target_forwards": 4,  # prefill + 3 steps
                "wall_s": 0.5,
                "drafted": [3, 3, 3],
                "tree_depth": [3, 3, 3],
                "accepted": [3, 1, 0],
            },
            "peers": {
                "hf_prompt_lookup": {"new_tokens": 10, "target_forwards": 5, "wall_s": 0.8, "match": True}
            },
            "match": True,
        },
        {
            "category": "math",
            "ar": {"new_tokens": 6, "target_forwards": 6, "wall_s": 1.0},
            "spec": {
                "new_tokens": 6,
                "target_forwards": 3,
                "wall_s": 0.5,
                "drafted": [3, 0],
                "tree_depth": [3, 0],  # a step where the n-gram drafter found nothing
                "accepted": [2, 0],
            },
            "peers": {
                "hf_prompt_lookup": {"new_tokens": 6, "target_forwards": 6, "wall_s": 0.7, "match": True}
            },
            "match": False,
            "diverge_at": 4,
            "diverge_gap": 0.01,
            "near_tie": True,
        },
        {
            "category": "coding",
            "ar": {"new_tokens": 4, "target_forwards": 4, "wall_s": 2.0},
            "spec": {
                "new_tokens": 4,
                "target_forwards": 2,
                "wall_s": 1.0,
                "drafted": [8],
                "tree_depth": [2],  # a tree of 8 nodes, 2 levels deep
                "accepted": [2],
            },
            "peers": {"hf_assisted": {"skipped": "no same-tokenizer assistant"}},
            "match": True,
        },
    ]


def test_hand_computed_values():
    m = compute_metrics(_rows())
    assert m["eval/tau"] == pytest.approx(20 / 9)
    assert m["eval/tokens_per_s"] == pytest.approx(20 / 2.0)
    assert m["eval/ar_tokens_per_s"] == pytest.approx(20 / 4.0)
    assert m["eval/speedup"] == pytest.approx((20 / 2.0) / (20 / 4.0))
    # alpha_1: steps with depth>=1: accepted [3,1,0,2,2] -> 4/5
    # alpha_2: depth>=2 and acc>=1: [3,1,2,2] -> acc>=2: 3/4
    # alpha_3: depth>=3 and acc>=2: [3 (d3), 2 (d3)] (the coding step has depth 2) -> 1/2
    assert m["eval/alpha_1"] == pytest.approx(4 / 5)
    assert m["eval/alpha_2"] == pytest.approx(3 / 4)
    assert m["eval/alpha_3"] == pytest.approx(1 / 2)
    assert "eval/alpha_4" not in m
    assert m["eval/accepted_per_step"] == pytest.approx(8 / 6)
    assert m["eval/lossless_match"] == pytest.approx(2 / 3)
    assert m["eval/diverged"] == 1 and m["eval/diverged_not_near_tie"] == 0
    # per category
    assert m["eval/math/tau"] == pytest.approx(16 / 7)
    assert m["eval/math/speedup"] == pytest.approx((16 / 1.0) / (16 / 2.0))
    assert m["eval/coding/tau"] == pytest.approx(2.0)
    assert m["eval/coding/speedup"] == pytest.approx(2.0)
    assert m["eval/coding/lossless_match"] == 1.0
    # peers: prompt lookup ran on the math rows only -> no speedup against the all-rows AR
    assert m["eval/peer/hf_prompt_lookup/tau"] == pytest.approx(16 / 11)
    assert m["eval/peer/hf_prompt_lookup/tokens_per_s"] == pytest.approx(16 / 1.5)
    assert "eval/peer/hf_prompt_lookup/speedup" not in m
    assert not any(k.startswith("eval/peer/hf_assisted") for k in m)


def test_peer_speedup_when_on_every_row_and_ar_tau_is_one():
    rows = [r for r in _rows() if r["category"] == "math"]
    m = compute_metrics(rows)
    assert m["eval/peer/hf_prompt_lookup/speedup"] == pytest.approx((16 / 1.5) / (16 / 2.0))
    # AR through the same function: tau exactly 1
    ar_only = [dict(r, spec=r["ar"], peers={}) for r in rows]
    assert compute_metrics(ar_only)["eval/tau"] == 1.0
    assert compute_metrics(ar_only)["eval/speedup"] == 1.0


def test_no_ar_no_speedup_and_bad_counts_fail():
    rows = [dict(r, ar=None, match=None) for r in _rows()]
    m = compute_metrics(rows)
    assert "eval/speedup" not in m and "eval/lossless_match" not in m and math.isfinite(m["eval/tau"])
    with pytest.raises(ValueError, match="accepted 4"):
        alpha_by_depth([{"accepted": [4], "tree_depth": [3]}])
    assert compute_metrics([]) == {}


def test_rank_and_calibration_metrics_by_hand():
    from vsd.evaluation.metrics import accepted_not_top1, calibration_errors

    bins = 10
    d1 = [[0, 0, 0] for _ in range(bins)]
    d1[9] = [4, 3.8, 4]  # conf 0.95, all accepted: gap 0.05
    d1[2] = [6, 1.5, 0]  # conf 0.25, none accepted: gap 0.25
    d2 = [[0, 0, 0] for _ in range(bins)]
    d2[5] = [2, 1.1, 2]  # conf 0.55, both accepted: gap 0.45
    runs = [
        {"accepted": [2, 0], "tree_depth": [2, 2], "accepted_ranks": [[0, 1], []], "calib": {"1": d1}},
        {"accepted": [1], "tree_depth": [2], "accepted_ranks": [[0]], "calib": {"2": d2}},
    ]
    assert accepted_not_top1(runs) == pytest.approx(1 / 3)
    ece = calibration_errors(runs)
    assert ece[1] == (pytest.approx(0.17), 10.0) and ece[2] == (pytest.approx(0.45), 2.0)
    rows = [
        {
            "category": "c",
            "ar": {"new_tokens": 4, "target_forwards": 4, "wall_s": 1.0},
            "spec": {"new_tokens": 4, "target_forwards": 2, "wall_s": 1.0, **r},
            "peers": {},
            "match": True,
        }
        for r in runs
    ]
    m = compute_metrics(rows)
    assert m["eval/accepted_not_top1"] == pytest.approx(1 / 3)
    assert m["eval/ece_d1"] == pytest.approx(0.17) and m["eval/ece_d2"] == pytest.approx(0.45)
    assert m["eval/ece"] == pytest.approx((10 * 0.17 + 2 * 0.45) / 12)
    assert m["eval/c/ece"] == pytest.approx(m["eval/ece"])
    # rows without the diagnostics (older eval.jsonl files) give no such keys
    for r in rows:
        del r["spec"]["accepted_ranks"], r["spec"]["calib"]
    assert not any(k.startswith(("eval/ece", "eval/accepted_not")) for k in compute_metrics(rows))
