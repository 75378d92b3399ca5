"""Drafts in and out of the EAGLE-3 ecosystem (vsd/models/formats, vsd/export.py): tiny official-format and
speculators-format checkpoints built by hand import; bad ones get one line naming the field or key; exports
hold the loaders' key sets; vsd -> eagle3 -> vsd and vsd -> speculators -> vsd are bit-exact."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.models.format_helpers import official_checkpoint, official_shapes, speculators_checkpoint
from vsd.errors import UserError
from vsd.export import export
from vsd.models import formats
from vsd.models.draft import DraftHead, build_head

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def target():
    from vsd.config import compose
    from vsd.models.target import load_target

    _, cfg = compose(["model=tiny_random"])[0]
    return load_target(cfg.model, cfg.paths.cache_dir, "cpu", "float32")


def _vsd_draft(target, d, feature_norm=True, num_layers=1, seed=0):
    """A vsd draft with non-trivial weights, saved to ``d``."""
    from vsd.config import compose

    _, cfg = compose(
        [
            "model=tiny_random",
            f"model.draft.num_layers={num_layers}",
            f"model.draft.feature_norm={str(feature_norm).lower()}",
        ]
    )[0]
    g = torch.Generator().manual_seed(seed)
    head = build_head(
        target, cfg.model.draft, torch.randperm(target.vocab_size, generator=g)[:120], seed=seed
    )
    with torch.no_grad():
        for p in head.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    head.save(d)
    return head


def _same_head(a: DraftHead, b: DraftHead) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert a.hc == b.hc


# ------------------------------------------------------------------------------------------ import
def test_official_checkpoint_imports(target, tmp_path):
    ids = official_checkpoint(tmp_path / "e", target)
    head, ck = formats.load_head(tmp_path / "e", target)
    w = torch.load(tmp_path / "e" / "pytorch_model.bin", weights_only=True)
    assert ck.fmt == "eagle3"
    assert torch.equal(head.d2t, ids)  # offsets -> absolute ids, never rebuilt
    assert torch.equal(head.t2d[ids], torch.arange(ids.numel())) and int((head.t2d >= 0).sum()) == ids.numel()
    assert head.hc.feature_layers == list(target.feature_layers)  # eagle_config ids + 1
    assert head.hc.rope_parameters == {"rope_type": "default", "rope_theta": 500000.0}  # the draft's own rope
    assert head.hc.feature_norm is False
    layer = head.layers[0]
    pairs = {  # the first layer's norms: of the embedding (input_layernorm) and of the hidden (hidden_norm)
        "midlayer.input_layernorm.weight": layer.input_norm.weight,
        "midlayer.hidden_norm.weight": layer.hidden_norm.weight,
        "midlayer.self_attn.q_proj.weight": layer.q_proj.weight,
        "midlayer.post_attention_layernorm.weight": layer.post_attention_norm.weight,
        "midlayer.mlp.down_proj.weight": layer.mlp.down_proj.weight,
        "fc.weight": head.fc.weight,
        "lm_head.weight": head.lm_head.weight,
    }
    for k, p in pairs.items():
        assert torch.equal(p, w[k].float()), k
    assert torch.equal(head.embed_tokens.weight, target.model.get_input_embeddings().weight)


def test_official_checkpoint_with_fc_norm_and_safetensors(target, tmp_path):
    official_checkpoint(tmp_path / "e", target, fc_norm=True, bin_file=False)
    head, _ = formats.load_head(tmp_path / "e", target)
    w = load_file(str(tmp_path / "e" / "model.safetensors"))
    assert head.hc.feature_norm is True
    assert torch.equal(head.feature_norms[1].weight, w["fc_norm.1.weight"].float())


def test_speculators_checkpoint_imports(target, tmp_path):
    ids = speculators_checkpoint(tmp_path / "s", target, num_layers=2)
    head, ck = formats.load_head(tmp_path / "s", target)
    w = load_file(str(tmp_path / "s" / "model.safetensors"))
    assert ck.fmt == "speculators" and torch.equal(head.d2t, ids)
    assert head.hc.num_layers == 2 and head.hc.feature_norm is True
    # a later layer's one input norm is speculators' input_layernorm (a plain LlamaDecoderLayer)
    assert torch.equal(head.layers[1].hidden_norm.weight, w["layers.1.input_layernorm.weight"].float())
    assert torch.equal(head.layers[0].input_norm.weight, w["layers.0.input_layernorm.weight"].float())


def test_embedded_embedding_must_be_the_targets(target, tmp_path):
    official_checkpoint(tmp_path / "e", target, bin_file=False)
    f = tmp_path / "e" / "model.safetensors"
    w = load_file(str(f))
    from safetensors.torch import save_file

    emb = target.model.get_input_embeddings().weight.detach()
    save_file({**w, "embed_tokens.weight": emb.half()}, str(f))  # SpecForge saves its frozen copy
    formats.load_head(tmp_path / "e", target)
    save_file({**w, "embed_tokens.weight": (emb + 1).half()}, str(f))
    with pytest.raises(UserError, match="embed_tokens.weight differs from the target's token embedding"):
        formats.load_head(tmp_path / "e", target)


def _edit_config(d, **kv):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(kv)
    (d / "config.json").write_text(json.dumps(cfg))


def _drop_key(d, key):
    w = torch.load(d / "pytorch_model.bin", weights_only=True)
    del w[key]
    torch.save(w, d / "pytorch_model.bin")


def _add_key(d, key):
    w = torch.load(d / "pytorch_model.bin", weights_only=True)
    w[key] = torch.ones(3)
    torch.save(w, d / "pytorch_model.bin")


def _bad_t2d(d):
    w = torch.load(d / "pytorch_model.bin", weights_only=True)
    w["t2d"] = ~w["t2d"]
    torch.save(w, d / "pytorch_model.bin")


BAD_OFFICIAL = [
    (
        "hidden size",
        lambda d: _edit_config(d, hidden_size=32),
        r"hidden_size=32, but the target tiny_random has hidden size 64",
    ),
    (
        "vocabulary",
        lambda d: _edit_config(d, vocab_size=300),
        r"vocab_size=300, but the target tiny_random has vocabulary 261",
    ),
    (
        "feature layers",
        lambda d: _edit_config(d, eagle_config={"eagle_aux_hidden_state_layer_ids": [0, 1, 2]}),
        r"eagle_config.eagle_aux_hidden_state_layer_ids gives feature layers \[1, 2, 3\]",
    ),
    ("target hidden", lambda d: _edit_config(d, target_hidden_size=128), r"target_hidden_size=128 differs"),
    (
        "norm_output",
        lambda d: _edit_config(d, norm_output=True),
        r"norm_output=True is not implemented by vsd",
    ),
    (
        "norm_before_fc",
        lambda d: _edit_config(d, norm_before_fc=True),
        r"norm_before_fc=True is not implemented",
    ),
    (
        "tied head",
        lambda d: _edit_config(d, tie_word_embeddings=True),
        r"tie_word_embeddings=True is not implemented",
    ),
    ("two layers", lambda d: _edit_config(d, num_hidden_layers=2), r"num_hidden_layers=2 is not implemented"),
    (
        "no draft vocab",
        lambda d: _edit_config(d, draft_vocab_size=None),
        r"config.json has no draft_vocab_size",
    ),
    ("fc_norm without keys", lambda d: _edit_config(d, fc_norm=True), r"missing key 'fc_norm.0.weight'"),
    (
        "missing key",
        lambda d: _drop_key(d, "midlayer.mlp.up_proj.weight"),
        r"missing key 'midlayer.mlp.up_proj.weight'",
    ),
    ("missing d2t", lambda d: _drop_key(d, "d2t"), r"missing key 'd2t'"),
    (
        "unknown key",
        lambda d: _add_key(d, "midlayer.self_attn.q_norm.weight"),
        r"unexpected key 'midlayer.self_attn.q_norm.weight'",
    ),
    ("bad t2d", _bad_t2d, r"t2d disagrees with d2t"),
    (
        "torn weights",
        lambda d: (d / "pytorch_model.bin").write_bytes(b"not a pickle"),
        r"pytorch_model.bin is unreadable",
    ),
    (
        "not a draft",
        lambda d: _edit_config(d, architectures=["LlamaForCausalLM"]),
        r"none of the draft formats",
    ),
]


@pytest.mark.parametrize("why,spoil,msg", BAD_OFFICIAL, ids=[b[0] for b in BAD_OFFICIAL])
def test_a_bad_official_checkpoint_is_one_line_naming_the_field(target, tmp_path, why, spoil, msg):
    d = tmp_path / "e"
    official_checkpoint(d, target)
    spoil(d)
    with pytest.raises(UserError, match=msg) as e:
        formats.load_head(d, target, key="train.init_from")
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"train.init_from: {d}")


def test_a_bad_speculators_checkpoint_is_one_line(target, tmp_path):
    d = tmp_path / "s"
    speculators_checkpoint(d, target)
    _edit_config(d, norm_before_residual=True)
    with pytest.raises(
        UserError, match=r"^draft.checkpoint: .*: norm_before_residual=True is not implemented"
    ):
        formats.load_head(d, target)
    speculators_checkpoint(d, target)
    cfg = json.loads((d / "config.json").read_text())
    cfg["transformer_layer_config"]["model_type"] = "qwen3"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"transformer_layer_config.model_type='qwen3' is not implemented"):
        formats.load_head(d, target)


# ------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("fmt", ["eagle3", "speculators"])
@pytest.mark.parametrize("feature_norm", [True, False])
def test_round_trip_is_bit_exact(target, tmp_path, fmt, feature_norm):
    """vsd -> fmt -> vsd: the same head (every weight, buffer and geometry field), and the vsd files written
    from it hold the same tensors."""
    h0 = _vsd_draft(target, tmp_path / "v", feature_norm=feature_norm)
    export(str(tmp_path / "v"), fmt, tmp_path / fmt, verifier="tiny", verifier_arch="LlamaForCausalLM")
    h1, ck = formats.load_head(tmp_path / fmt, target)
    assert ck.fmt == fmt
    _same_head(h0, h1)
    h1.save(tmp_path / "back")
    for f in ("model.safetensors", "vocab.safetensors"):
        a, b = load_file(str(tmp_path / "v" / f)), load_file(str(tmp_path / "back" / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


def test_speculators_round_trip_with_two_layers(target, tmp_path):
    h0 = _vsd_draft(target, tmp_path / "v", num_layers=2)
    export(
        str(tmp_path / "v"), "speculators", tmp_path / "s", verifier="tiny", verifier_arch="LlamaForCausalLM"
    )
    _same_head(h0, formats.load_head(tmp_path / "s", target)[0])
    with pytest.raises(UserError, match="--to eagle3: the official layout holds one decoder layer"):
        export(str(tmp_path / "v"), "eagle3", tmp_path / "e")
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.tmp*"))  # nothing half-written


def test_official_export_holds_the_loaders_key_set(target, tmp_path):
    """The export's keys and shapes are exactly what the loaders map, no more: SGLang skips a key it does not
    know (python/sglang/srt/models/llama_eagle3.py load_weights: ``if param_name in params_dict``), so a
    misnamed key would serve a random layer, and vLLM's loader raises on one
    (vllm/model_executor/models/llama_eagle3.py LlamaModel.load_weights: ``params_dict[name]``)."""
    for fc_norm in (False, True):
        out = tmp_path / f"e{fc_norm}"
        h = _vsd_draft(target, tmp_path / f"v{fc_norm}", feature_norm=fc_norm)
        export(str(tmp_path / f"v{fc_norm}"), "eagle3", out)
        w = load_file(str(out / "model.safetensors"))
        hc = h.hc
        want = official_shapes(
            hc.hidden_size,
            hc.num_heads * hc.head_dim,
            hc.num_kv_heads * hc.head_dim,
            hc.intermediate_size,
            hc.draft_vocab_size,
            hc.target_vocab_size,
            fc_norm,
        )
        assert {k: tuple(v.shape) for k, v in w.items()} == want
        # SGLang: hot_token_id = d2t + arange (int64 offsets); EAGLE cnets: t2d a bool buffer
        assert w["d2t"].dtype == torch.int64 and w["t2d"].dtype == torch.bool
        assert torch.equal(w["d2t"] + torch.arange(hc.draft_vocab_size), h.d2t)
        assert torch.equal(w["t2d"].nonzero().flatten(), h.d2t.sort().values)
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["architectures"] == ["LlamaForCausalLMEagle3"]  # SGLang's EntryClass
        assert cfg["tie_word_embeddings"] is False  # SGLang: true makes lm_head = embed_tokens
        assert cfg["draft_vocab_size"] == hc.draft_vocab_size  # SGLang: None loads the target's full LM head
        # SGLang set_eagle3_layers_to_capture: layers_to_capture = [id + 1 ...] (ids name layer outputs)
        assert [i + 1 for i in cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"]] == hc.feature_layers
        assert cfg["fc_norm"] is fc_norm and "embed_tokens.weight" not in w  # loaders take the target's
        assert (out / "README.md").is_file()


def test_speculators_export_config(target, tmp_path):
    _vsd_draft(target, tmp_path / "v")
    export(
        str(tmp_path / "v"),
        "speculators",
        tmp_path / "s",
        verifier="org/tiny",
        verifier_arch="LlamaForCausalLM",
    )
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["speculators_model_type"] == "eagle3"
    assert (
        cfg["norm_before_residual"] is False
    )  # vLLM reads a missing one as true (configs/speculators/algos.py)
    assert cfg["speculators_config"]["verifier"] == {
        "name_or_path": "org/tiny",
        "architectures": ["LlamaForCausalLM"],
    }
    assert cfg["speculators_config"]["proposal_methods"][0]["speculative_tokens"] == 5  # vLLM requires it
    assert cfg["eagle_aux_hidden_state_layer_ids"] == list(target.feature_layers)
    w = load_file(str(tmp_path / "s" / "model.safetensors"))
    assert "layers.0.hidden_norm.weight" in w and "fc_norm.2.weight" in w and "embed_tokens.weight" not in w


def test_export_refuses_to_overwrite_and_exits_non_zero(target, tmp_path):
    _vsd_draft(target, tmp_path / "v")
    (tmp_path / "out").mkdir()
    cmd = [
        sys.executable,
        "-m",
        "vsd.export",
        str(tmp_path / "v"),
        "--to",
        "eagle3",
        "--out",
        str(tmp_path / "out"),
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"error: --out: {tmp_path / 'out'} exists; choose a new directory (an export never overwrites)"
    ]
    assert list((tmp_path / "out").iterdir()) == []


def test_export_of_a_run_draft_writes_a_readme_from_its_record(target, tmp_path):
    run = tmp_path / "run"
    _vsd_draft(target, run / "draft")
    (run / "config.json").write_text(
        json.dumps(
            {
                "loss": {"name": "vsd"},
                "train": {"steps": 24, "batch_size": 8, "lr": 1e-4, "init_from": "shipped"},
                "dataset": {"name": "sharegpt_selfdistill", "num_prompts": 192},
                "seed": 0,
                "run_name": "default",
            }
        )
    )
    (run / "metrics.json").write_text(json.dumps({"eval/tau": 3.09, "eval/speedup": 1.81}))
    export(str(run), "speculators", tmp_path / "s", verifier="org/tiny", verifier_arch="LlamaForCausalLM")
    text = (tmp_path / "s" / "README.md").read_text()
    assert "loss `vsd`, 24 steps x 8 sequences" in text and "warm start `shipped`" in text
    assert "tau 3.09, speedup 1.81x" in text and "vllm serve" in text


def test_shipped_draft_exports_to_both_formats(default_target, tmp_path):
    """The shipped base draft (bf16 on disk) exports to both layouts and reads back bit for bit."""
    from vsd.config import compose
    from vsd.models.draft import resolve_draft_dir

    _, cfg = compose([])[0]
    ref = DraftHead.load(resolve_draft_dir("shipped", cfg.model, "k"), default_target)
    for fmt in ("eagle3", "speculators"):
        out = export("shipped", fmt, tmp_path / fmt)
        cfg_out = json.loads((out / "config.json").read_text())
        assert cfg_out["torch_dtype"] == "bfloat16"
        head, _ = formats.load_head(out, default_target)
        _same_head(ref, head)
    verifier = json.loads((tmp_path / "speculators" / "config.json").read_text())["speculators_config"][
        "verifier"
    ]
    assert verifier == {
        "name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "architectures": ["LlamaForCausalLM"],
    }
    assert "fc_norm" in (tmp_path / "eagle3" / "README.md").read_text()
