"""A real client checks the exports: speculators' own Eagle3DraftModel (vllm-project/speculators, CPU) loads
vsd's speculators export of a small draft and gives vsd's logits on the same features and tokens; and
speculators' own converter for official EAGLE-3 checkpoints takes vsd's eagle3 export to the same logits.

speculators is not a vsd dependency: it is installed beside vsd with ``pip install --no-deps`` plus the few
modules its model classes import (docs/ecosystem.md); without it these tests are skipped.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("speculators.models.eagle3", reason="speculators is not installed (docs/ecosystem.md)")

from speculators.models.eagle3 import Eagle3DraftModel  # noqa: E402

from vsd.export import export  # noqa: E402
from vsd.models.draft import build_head, shift_left  # noqa: E402

# fp32 on both sides; the two compute the same ops in a different order (flex attention vs SDPA, fused vs
# split q/k/v): measured max |diff| 1.2e-6 (step 0) and 1.4e-6 (step 1) on logits up to 4.05 (2026-12-07, CPU).
RTOL = ATOL = 1e-5
T = 128  # positions (speculators builds flex-attention block masks of 128 positions)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny 8-layer target (speculators wants distinct feature layers: [2, 4, 5]) saved as a local verifier
    folder, and a vsd draft for it with non-trivial weights."""
    from vsd.config import compose
    from vsd.models.target import load_target

    tmp = tmp_path_factory.mktemp("spec")
    _, cfg = compose(["model=tiny_random", "model.random.num_layers=8"])[0]
    target = load_target(cfg.model, cfg.paths.cache_dir, "cpu", "float32")
    target.model.save_pretrained(tmp / "verifier")
    target.tokenizer.save_pretrained(tmp / "verifier")
    g = torch.Generator().manual_seed(0)
    head = build_head(target, cfg.model.draft, torch.randperm(target.vocab_size, generator=g)[:192], seed=0)
    with torch.no_grad():
        for p in head.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    head.save(tmp / "draft")
    plain = build_head(  # without fc_norm: speculators 0.9.0's official-layout converter drops fc_norm.* keys
        target, dataclasses.replace(cfg.model.draft, feature_norm=False), head.d2t.clone(), seed=1
    )
    with torch.no_grad():
        for p in plain.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    plain.save(tmp / "plain")
    ids = torch.randint(0, target.vocab_size, (1, T), generator=g)
    feats = target.forward(ids, output_features=True, use_cache=False).features
    return target, head, plain, tmp, ids, feats


def _vsd_logits(head, feats, ids, steps: int) -> list[torch.Tensor]:
    """vsd's training-time-test unroll (as vsd.losses.eagle3): step k reads the tokens k further on."""
    pos = torch.arange(T)[None]
    cache = head.new_ttt_cache()
    hidden, out = head.fuse(feats), []
    with torch.no_grad():
        for k in range(steps):
            hidden, logits = head.step(hidden, shift_left(ids, k), pos + k, cache)
            out.append(logits)
    return out


def _speculators_logits(model, feats, ids, steps: int) -> list[torch.Tensor]:
    """Eagle3DraftModel.forward's own unroll; its LM head's outputs, one per step, caught by a hook."""
    caught: list[torch.Tensor] = []
    hook = model.lm_head.register_forward_hook(lambda mod, args, out: caught.append(out))
    try:
        with torch.no_grad():
            model(
                hidden_states=feats,
                input_ids=ids,
                document_ids=torch.zeros(1, T, dtype=torch.long),
                position_ids=torch.arange(T)[None],
                ttt_steps=steps,
            )
    finally:
        hook.remove()
    return caught


def _check(model, target, head, feats, ids) -> None:
    # The verifier's embedding (the export ships none; both loaders take the verifier's). speculators loads it
    # only over a NaN-initialised one; under transformers 5.24 (past its declared <=5.19) a missing weight is
    # not NaN-filled, so ask its own verifier loader to overwrite.
    model._load_verifier_weights(overwrite_embed_tokens=True)
    assert torch.equal(model.embed_tokens.weight, target.model.get_input_embeddings().weight)
    assert torch.equal(model.d2t + torch.arange(model.d2t.numel()), head.d2t)
    model.eval()
    ours, theirs = _vsd_logits(head, feats, ids, 2), _speculators_logits(model, feats, ids, 2)
    assert len(theirs) == 2
    for k in range(2):  # step 0 and the first training-time-test step (attends to step 0's keys)
        torch.testing.assert_close(theirs[k], ours[k], rtol=RTOL, atol=ATOL)


def test_speculators_loads_the_export_with_equal_logits(setup):
    target, head, _, tmp, ids, feats = setup
    out = export(str(tmp / "draft"), "speculators", tmp / "spec", verifier=str(tmp / "verifier"))
    model = Eagle3DraftModel.from_pretrained(str(out))
    assert model.config.eagle_aux_hidden_state_layer_ids == list(target.feature_layers) == [2, 4, 5]
    assert model.fc_norm is not None and model.input_norm is None  # fc_norm on, norm_before_fc off
    _check(model, target, head, feats, ids)


def test_speculators_converter_takes_the_official_export(setup):
    """speculators' converter for official EAGLE-3 checkpoints (midlayer.* -> layers.0.*, fc_norm from the
    config) reads vsd's eagle3 export; the converted draft gives vsd's logits. The converter takes the feature
    layers as an argument (it does not read eagle_config). Its legacy model has no fc_norm modules and drops
    fc_norm.* keys (speculators 0.9.0), so this draft has none."""
    from speculators.convert.eagle.eagle3_converter import Eagle3Converter

    target, _, plain, tmp, ids, feats = setup
    official = export(str(tmp / "plain"), "eagle3", tmp / "official")
    Eagle3Converter().convert(
        official,
        tmp / "converted",
        base_model=str(tmp / "verifier"),
        eagle_aux_hidden_state_layer_ids=list(target.feature_layers),
    )
    _check(Eagle3DraftModel.from_pretrained(str(tmp / "converted")), target, plain, feats, ids)
