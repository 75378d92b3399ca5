"""The shipped base draft (vsd/drafts/): found by `shipped`, checked by sha256, one-line errors when broken."""

import shutil

import pytest
import torch

import vsd.models.draft as draft_mod
from vsd.config import compose
from vsd.errors import UserError
from vsd.models.draft import DraftHead, resolve_draft_dir


def test_shipped_base_loads_checked_and_drafts(default_target):
    _, cfg = compose([])[0]
    d = resolve_draft_dir("shipped", cfg.model, "train.init_from")
    assert d == draft_mod.DRAFTS_DIR / "smollm2_135m_base"
    assert (d / "model.safetensors").stat().st_size < 25e6  # the budget for a committed draft
    head = DraftHead.load(d, default_target)  # verifies the recorded sha256 of both weight files
    assert head.hc.target_name == "smollm2_135m" and head.d2t.numel() == 8192
    assert head.fc.weight.dtype == torch.float32  # saved in bf16, trained and run in fp32 on any CPU
    # a trained draft: on a sentence the target itself continues, its top-1 agrees with the target often
    ids = torch.tensor(
        [default_target.chat_ids([{"role": "user", "content": "What is the capital of France?"}])]
    )
    for _ in range(12):
        nxt = default_target.forward(ids).logits[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], 1)
    out = default_target.forward(ids, output_features=True)
    with torch.no_grad():  # step 0 at position t reads [emb(x_{t+1}); h_t] and predicts x_{t+2}
        _, logits = head.step(
            head.fuse(out.features[:, :-1]), ids[:, 1:], torch.arange(ids.shape[1] - 1)[None]
        )
    agree = (head.d2t[logits[0, :-1].argmax(-1)] == ids[0, 2:]).float()[-11:].mean()
    assert agree > 0.5, float(agree)


def test_a_corrupt_shipped_draft_is_one_line_naming_the_file(default_target, tmp_path):
    src = draft_mod.DRAFTS_DIR / "smollm2_135m_base"
    dst = tmp_path / "smollm2_135m_base"
    shutil.copytree(src, dst)
    with open(dst / "model.safetensors", "r+b") as fh:
        fh.seek(1_000_000)
        fh.write(b"\x00" * 4096)
    with pytest.raises(UserError) as e:
        DraftHead.load(dst, default_target)
    msg = str(e.value)
    assert "\n" not in msg and str(dst / "model.safetensors") in msg and "sha256" in msg


def test_missing_or_absent_shipped_draft_is_one_line(monkeypatch, tmp_path):
    _, cfg = compose([])[0]
    monkeypatch.setattr(draft_mod, "DRAFTS_DIR", tmp_path)
    with pytest.raises(UserError, match=r"train.init_from: the shipped draft .*smollm2_135m_base is missing"):
        resolve_draft_dir("shipped", cfg.model, "train.init_from")
    _, tiny = compose(["model=tiny_random"])[0]
    with pytest.raises(UserError, match="draft.checkpoint: model tiny_random ships no base draft"):
        resolve_draft_dir("shipped", tiny.model, "draft.checkpoint")
    assert resolve_draft_dir("~/x", cfg.model, "k").name == "x"  # any other value is a path
