"""Draft vocab: top-k by frequency, inverse maps, coverage on a hand case, save/load."""

import pytest
import torch

from vsd.data.split import heldout_split
from vsd.data.vocab import build_vocab, load_vocab, save_vocab, token_counts
from vsd.errors import UserError


def test_hand_case():
    # responses: token 5 x4, 2 x3, 9 x2, 1 x1 (10 tokens); prompt tokens must not count
    seqs = [
        {
            "input_ids": torch.tensor([7, 7, 7, 5, 5, 2, 9]),
            "loss_mask": torch.tensor([0, 0, 0, 1, 1, 1, 1]).bool(),
        },
        {
            "input_ids": torch.tensor([7, 5, 5, 2, 2, 9, 1]),
            "loss_mask": torch.tensor([0, 1, 1, 1, 1, 1, 1]).bool(),
        },
    ]
    counts = token_counts(seqs, 12)
    assert counts.tolist() == [0, 1, 3, 0, 0, 4, 0, 0, 0, 2, 0, 0]
    v = build_vocab(counts, 3)
    assert v["d2t"].tolist() == [2, 5, 9]  # the 3 most frequent, sorted by target id
    assert v["coverage"] == pytest.approx(9 / 10)
    assert v["t2d"].shape == (12,) and v["t2d"][v["d2t"]].tolist() == [0, 1, 2]
    assert (v["t2d"] == -1).sum() == 9
    # capped at the target vocab; unseen ids fill the remainder in id order
    v = build_vocab(counts, 100)
    assert v["size"] == 12 and v["coverage"] == 1.0 and v["d2t"].tolist() == list(range(12))
    # ties broken by lower id: 2 and 9 tie at count 1 for the last slot
    v = build_vocab(torch.tensor([0, 0, 1, 5, 0, 0, 0, 0, 0, 1]), 2)
    assert v["d2t"].tolist() == [2, 3]


def test_maps_are_inverse_and_roundtrip(tmp_path):
    counts = torch.randint(0, 50, (300,))
    v = build_vocab(counts, 64)
    d2t, t2d = v["d2t"], v["t2d"]
    assert torch.equal(t2d[d2t], torch.arange(64))
    present = t2d >= 0
    assert torch.equal(d2t[t2d[present]], torch.nonzero(present).flatten())
    assert torch.all(d2t[1:] > d2t[:-1])
    p = save_vocab(tmp_path / "v.safetensors", v)
    back = load_vocab(p)
    assert torch.equal(back["d2t"], d2t) and torch.equal(back["t2d"], t2d) and back["d2t"].dtype == torch.long
    with pytest.raises(UserError, match="does not exist"):
        load_vocab(tmp_path / "missing.safetensors")


def test_heldout_split():
    tr, he = heldout_split(50, 0.1, 0)
    assert len(he) == 5 and sorted(tr + he) == list(range(50)) and not set(tr) & set(he)
    assert heldout_split(50, 0.1, 0) == (tr, he) != heldout_split(50, 0.1, 1)
    assert heldout_split(10, 0.0, 0) == (list(range(10)), [])
    assert len(heldout_split(4, 0.01, 0)[1]) == 1
