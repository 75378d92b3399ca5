"""loss.eagle3_weight and loss.car_paths (issue 30): validation, the default reproduces the loss bit for bit,
weight 0 removes L_EAGLE3's gradient, car_paths=sampled puts CAR on positions the filtered CAR never sees."""

from __future__ import annotations

import pytest
import torch

from vsd.config import compose
from vsd.data.vocab import build_vocab, token_counts
from vsd.errors import ConfigError
from vsd.features.dataset import collate
from vsd.losses import build_loss
from vsd.models.draft import build_head
from vsd.train.toy_data import make_toy_items

WARM = "train.init_from=/some/eagle3/draft"


def _cfg(*over: str):
    return compose(["model=tiny_random", "loss=vsd", WARM, *over])[0][1]


@pytest.mark.parametrize(
    "over,key",
    [
        (["loss.eagle3_weight=-1"], "loss.eagle3_weight"),
        (["loss.eagle3_weight=0", "loss.vsd_weight=0", "loss.car=false"], "loss.eagle3_weight"),
        (["loss.eagle3_weight=0.5", "loss.vsd_start_step=3"], "loss.eagle3_weight"),
        (["loss.car_paths=all"], "loss.car_paths"),
        (["loss.car_paths=sampled", "loss.car=false"], "loss.car_paths"),
        (["loss.car_paths=sampled", "loss.estep=tree"], "loss.car_paths"),
    ],
)
def test_bad_values_fail_in_one_line_naming_the_key(over, key):
    with pytest.raises(ConfigError) as ei:
        _cfg(*over)
    assert str(ei.value).startswith(key + ":") and "\n" not in str(ei.value)


def test_eagle3_loss_refuses_a_weight():
    with pytest.raises(ConfigError, match=r"^loss\.eagle3_weight:"):
        compose(["model=tiny_random", "loss=eagle3", "loss.eagle3_weight=0"])


def test_defaults():
    cfg = _cfg()
    assert cfg.loss.eagle3_weight == 1.0 and cfg.loss.car_paths == "kept"
    # the arms' settings compose
    assert _cfg("loss.eagle3_weight=0").loss.eagle3_weight == 0.0
    assert _cfg("loss.vsd_weight=0", "loss.car_paths=sampled").loss.car_paths == "sampled"


@pytest.fixture(scope="module")
def setup(tiny_target):
    torch.manual_seed(0)
    cfg = _cfg()
    items = make_toy_items(tiny_target, 8, prompt_len=8, new_tokens=24, seed=0)
    vocab = build_vocab(token_counts(items, tiny_target.vocab_size) + 1, cfg.model.draft.vocab_size)
    head = build_head(tiny_target, cfg.model.draft, vocab["d2t"], seed=0)
    return tiny_target, vocab, head, collate(items)


def _run(setup, *over: str, step: int = 5):
    """(total, logs, grads) of a fresh loss (same seed: the same E-step draws) on the setup's batch."""
    target, vocab, head, batch = setup
    loss = build_loss(_cfg(*over).loss, target, vocab, seed=3)
    head.zero_grad()
    val, logs = loss(head, batch, step)
    val.backward()
    return val.detach(), logs, [p.grad.clone() for p in head.parameters() if p.requires_grad]


def _base(setup):
    target, vocab, head, batch = setup
    e3 = build_loss(compose(["model=tiny_random", "loss=eagle3"])[0][1].loss, target, vocab)
    head.zero_grad()
    val, _ = e3(head, batch, 5)
    val.backward()
    return val.detach(), [p.grad.clone() for p in head.parameters() if p.requires_grad]


def test_weight_one_is_the_old_expression_bit_for_bit(setup):
    """L = L_EAGLE3 + vsd_weight * L_M + car_weight * CAR in float32, rebuilt from the logged terms (a float32
    logged as a Python float converts back exactly)."""
    base, _ = _base(setup)
    for over in ([], ["loss.eagle3_weight=1"]):
        val, logs, _ = _run(setup, "loss.vsd_weight=2", "loss.car_weight=0.3", *over)
        f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
        ref = base + 2.0 * f32(logs["vsd/m_loss"])
        ref = ref + 0.3 * f32(logs["vsd/car"])
        assert torch.equal(val, ref), (val, ref)
    half, logs, _ = _run(setup, "loss.vsd_weight=2", "loss.car_weight=0.3", "loss.eagle3_weight=0.5")
    assert not torch.equal(half, val)
    assert torch.allclose(half, 0.5 * base + 2.0 * logs["vsd/m_loss"] + 0.3 * logs["vsd/car"])


def test_weight_zero_removes_the_eagle3_gradient_and_keeps_the_em_steps(setup):
    base, g_base = _base(setup)
    full, logs1, g_full = _run(setup, "loss.car=true")
    zero, logs0, g_zero = _run(setup, "loss.car=true", "loss.eagle3_weight=0")
    # the E-step and the M-step ran, on the same draws
    assert logs0["vsd/mean_U"] == logs1["vsd/mean_U"] and logs0["vsd/m_loss"] == logs1["vsd/m_loss"]
    assert torch.allclose(zero, torch.tensor(logs0["vsd/m_loss"] + 0.1 * logs0["vsd/car"]))
    for gz, gf, gb in zip(g_zero, g_full, g_base):
        assert torch.allclose(gz, gf - gb, atol=1e-5)
    assert any(not torch.allclose(gz, gf, atol=1e-5) for gz, gf in zip(g_zero, g_full))  # it did change


def test_car_on_sampled_paths_sees_positions_the_filtered_car_does_not(setup):
    batch = setup[3]
    _, kept, _ = _run(setup, "loss.vsd_weight=0")
    _, own, g_own = _run(setup, "loss.vsd_weight=0", "loss.car_paths=sampled")
    cfg = _cfg().loss
    total = batch["input_ids"].shape[0] * cfg.anchors_per_seq * cfg.num_samples * cfg.depth
    assert own["vsd/car_positions"] == total  # every sampled token of every valid anchor
    assert kept["vsd/car_positions"] < total  # the oracle filter drops rejected tokens (random draft)
    assert kept["vsd/car_positions"] == kept["n_vsd_tok"]
    assert own["vsd/car"] != kept["vsd/car"]
    assert any(g.abs().sum() > 0 for g in g_own)
