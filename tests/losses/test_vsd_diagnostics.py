"""The E-step diagnostics say what the issue says they say: on the target's own greedy text the kept tokens are
the data's (novel_frac 0, oracle_vs_data 0); on text the target would not write they are not."""

import pytest
import torch

from vsd.config import compose
from vsd.data.vocab import build_vocab, token_counts
from vsd.features.dataset import collate
from vsd.losses import build_loss
from vsd.losses.vsd import finalize_vsd_logs
from vsd.models.draft import build_head
from vsd.train.toy_data import make_toy_items


@pytest.fixture(scope="module")
def setup(tiny_target):
    greedy = make_toy_items(tiny_target, 8, prompt_len=6, new_tokens=20, seed=3)
    random = make_toy_items(tiny_target, 8, prompt_len=6, new_tokens=20, seed=4, greedy=False)
    vocab = build_vocab(token_counts(greedy + random, tiny_target.vocab_size) + 1, 200)
    head = build_head(tiny_target, compose(["model=tiny_random"])[0][1].model.draft, vocab["d2t"], seed=0)
    e3 = build_loss(
        compose(["model=tiny_random", "loss=eagle3", "loss.ttt_steps=3"])[0][1].loss, tiny_target, vocab
    )
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    batch = collate(greedy)
    for s in range(25):  # a draft that predicts the target: the E-step keeps something
        opt.zero_grad()
        e3(head, batch, s)[0].backward()
        opt.step()
    return tiny_target, vocab, head, collate(greedy), collate(random)


@pytest.mark.parametrize("estep", ["chain", "tree"])
def test_novel_and_oracle_vs_data(setup, estep):
    target, vocab, head, greedy, random = setup
    over = ["model=tiny_random", "loss=vsd", "train.init_from=x", f"loss.estep={estep}", "loss.depth=3"]
    over += ["loss.tree_top_k=3", "loss.tree_total_tokens=9", "loss.anchors_per_seq=6"]
    loss = build_loss(compose(over)[0][1].loss, target, vocab)
    with torch.no_grad():
        _, own = loss(head, greedy, 0)
        _, other = loss(head, random, 0)
    own, other = {**own, **finalize_vsd_logs(own)}, {**other, **finalize_vsd_logs(other)}
    assert own["vsd/kept_tokens"] > 0  # something was kept, so the fractions mean something
    assert own["vsd/novel_frac"] == 0.0 and own["vsd/oracle_vs_data"] == 0.0  # fp32: exactly the data's path
    assert other["vsd/oracle_vs_data"] > 0.5  # random bytes are rarely what the target would write
    if other["vsd/kept_tokens"] > 0:
        assert other["vsd/novel_frac"] > 0.5
    assert own["vsd/distinct_prefixes"] >= 1.0
    if estep == "tree":  # one accepted path per anchor
        assert own["vsd/distinct_prefixes"] == 1.0
