"""The per-turn eval pieces (vsd.evaluation.turns) on the tiny random target: divergence, HF peer counting, cost model, drafter choice."""

from __future__ import annotations

import pytest

from vsd.config import compose
from vsd.decoding.shape_measure import representative_tree, verify_tree_size
from vsd.errors import UserError
from vsd.evaluation.costs import cost_metrics, measure_forward_costs
from vsd.evaluation.turns import first_divergence, hf_generate


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert first_divergence([], []) is None


def test_hf_peer_counts_forwards_and_matches_our_ar(tiny_target):
    from vsd.decoding.engine import generate_ar

    _, cfg = compose(["model=tiny_random", "decoding=ngram", "decoding.max_new_tokens=12"])[0]
    ids = tiny_target.chat_ids([{"role": "user", "content": "abc abc abc abc"}])
    ours = generate_ar(tiny_target, ids, cfg.decoding)
    plain = hf_generate(tiny_target, ids, cfg.decoding, 0)
    assert plain["ids"] == ours.tokens
    assert plain["target_forwards"] == plain["new_tokens"] == ours.target_forwards  # AR: one per token
    lookup = hf_generate(
        tiny_target, ids, cfg.decoding, 0, prompt_lookup_num_tokens=5, max_matching_ngram_size=3
    )
    assert lookup["ids"] == ours.tokens  # fp32: exact
    assert lookup["target_forwards"] <= lookup["new_tokens"] and lookup["wall_s"] > 0


def test_cost_model(tiny_target):
    _, cfg = compose(["model=tiny_random", "decoding=tree"])[0]
    d = cfg.decoding
    tree = representative_tree(d, tiny_target.vocab_size)
    assert tree.size == verify_tree_size(d) == d.total_tokens and (tree.parents == -1).sum() == d.top_k
    ids = tiny_target.chat_ids([{"role": "user", "content": "hello " * 20}])
    fc = measure_forward_costs(tiny_target, ids, d, repeats=3, warmup=1)
    assert fc["verify_tokens"] == d.total_tokens + 1 and fc["t1_s"] > 0 and fc["c_verify"] > 0
    # the static-cache runner (what cuda_graph replays) is measured through the same runner and rolled back
    _, scfg = compose(
        ["model=tiny_random", "decoding=tree", "decoding.capture=static", "decoding.max_len=256"]
    )[0]
    fs = measure_forward_costs(tiny_target, ids, scfg.decoding, repeats=3, warmup=1)
    assert fs["verify_tokens"] == fc["verify_tokens"] and fs["t1_s"] > 0
    assert tiny_target._graph_runners[("static", 256)].length == len(ids)
    rows = [{"spec": {"accepted": [1, 2], "draft_s": 0.2}}, {"spec": {"accepted": [0, 0], "draft_s": 0.2}}]
    m = cost_metrics({"t1_s": 0.01, "c_verify": 1.5, "verify_tokens": 33.0}, rows, d, tau=2.0)
    # drafter time per step 0.1 s = 10 t1 = D * c_draft
    assert m["eval/c_draft"] == pytest.approx(10 / d.depth)
    assert m["eval/speedup_bound"] == pytest.approx(2.0 / (1.5 + 10))


def test_make_drafter_needs_a_checkpoint(tmp_path):
    from types import SimpleNamespace

    from vsd.evaluation.stage import make_drafter

    _, cfg = compose(
        ["model=tiny_random", "decoding=chain", "stages=[eval]", f"draft.checkpoint={tmp_path}/x"]
    )[0]
    ctx = SimpleNamespace(cfg=cfg, artifacts={}, target=None)
    with pytest.raises(UserError, match="draft.checkpoint: draft directory .*/x does not exist"):
        make_drafter(ctx)


def test_run_turn_records_divergence_and_near_tie(monkeypatch):
    """With stand-in engine results: the row's match / divergence index / AR gap / near-tie flag."""
    from types import SimpleNamespace

    import vsd.decoding.engine as engine
    from vsd.decoding.engine import GenResult
    from vsd.evaluation.turns import TurnDecoder

    _, cfg = compose(["model=tiny_random", "decoding=ngram", "eval=smoke", "decoding.near_tie_eps=0.1"])[0]
    ar = GenResult([5, 6, 7, 8], 4, top2_gap=[2.0, 1.0, 0.05, 3.0])
    spec = GenResult([5, 6, 9, 8], 2, drafted=[3], accepted=[2], tree_depth=[3], wall_s=0.1, draft_s=0.01)
    monkeypatch.setattr(engine, "generate_ar", lambda *a, **k: ar)
    monkeypatch.setattr(engine, "generate_spec", lambda *a, **k: spec)
    target = SimpleNamespace(device="cpu")
    turns = TurnDecoder(target, None, cfg.decoding, cfg.eval, None)
    row, ref = turns.run_turn({"id": "x", "category": "c"}, 0, [1, 2, 3])
    assert ref is ar and row["match"] is False and row["diverge_at"] == 2
    assert row["diverge_gap"] == 0.05 and row["near_tie"] is True
    assert row["spec"]["accepted"] == [2] and row["ar"]["ids"] == [5, 6, 7, 8] and row["peers"] == {}
    spec.tokens[2] = 7
    row, _ = turns.run_turn({"id": "x", "category": "c"}, 0, [1, 2, 3])
    assert row["match"] is True and row["diverge_at"] is None
