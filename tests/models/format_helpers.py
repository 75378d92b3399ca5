"""Tiny official-format and speculators-format EAGLE-3 checkpoints, built here by hand (no hub, no vsd writer):
the key names and config fields are those of the public loaders, cited where each is used."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Per decoder layer, (name, shape) with H hidden, A = heads*head_dim, K = kv_heads*head_dim, I intermediate,
# I0 the attention input width (2H for the first layer: [embedding; hidden]).
# Names: HF LlamaDecoderLayer's (self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, input_layernorm,
# post_attention_layernorm) plus EAGLE-3's hidden_norm (EAGLE eagle/model/cnets.py LlamaDecoderLayeremb;
# SGLang python/sglang/srt/models/llama_eagle3.py LlamaDecoderLayer; speculators eagle3/model_definitions.py).


def layer_shapes(H: int, A: int, K: int, inter: int, first: bool) -> dict[str, tuple[int, ...]]:
    i0 = 2 * H if first else H
    out = {
        "self_attn.q_proj.weight": (A, i0),
        "self_attn.k_proj.weight": (K, i0),
        "self_attn.v_proj.weight": (K, i0),
        "self_attn.o_proj.weight": (H, A),
        "mlp.gate_proj.weight": (inter, H),
        "mlp.up_proj.weight": (inter, H),
        "mlp.down_proj.weight": (H, inter),
        "input_layernorm.weight": (H,),
        "post_attention_layernorm.weight": (H,),
    }
    if first:
        out["hidden_norm.weight"] = (H,)
    return out


def official_shapes(
    H: int, A: int, K: int, inter: int, vd: int, vocab: int, fc_norm: bool = False
) -> dict[str, tuple[int, ...]]:
    """Every tensor SGLang's LlamaForCausalLMEagle3.load_weights maps and the EAGLE code's Model holds."""
    out = {f"midlayer.{k}": s for k, s in layer_shapes(H, A, K, inter, first=True).items()}
    out["fc.weight"] = (H, 3 * H)  # SGLang LlamaModel.fc: Linear(hidden_size_in * 3, hidden_size)
    out["norm.weight"] = (H,)  # SGLang LlamaModel.norm
    out["lm_head.weight"] = (vd, H)  # SGLang ParallelLMHead(draft_vocab_size, hidden_size) (untied)
    out["d2t"] = (vd,)  # SGLang load_weights: hot_token_id = d2t + arange (offsets)
    out["t2d"] = (vocab,)  # EAGLE cnets Model: a bool buffer over the target vocab (SGLang skips it)
    if fc_norm:  # EAGLE-3.1: one RMSNorm per feature block (speculators Eagle3DraftModel.fc_norm)
        out.update({f"fc_norm.{i}.weight": (H,) for i in range(3)})
    return out


def _tensors(shapes: dict[str, tuple[int, ...]], ids: torch.Tensor, vocab: int, seed: int, dtype):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k == "d2t":
            out[k] = ids - torch.arange(ids.numel())  # offsets
        elif k == "t2d":
            m = torch.zeros(vocab, dtype=torch.bool)
            m[ids] = True
            out[k] = m
        elif len(s) == 1:
            out[k] = (1.0 + 0.1 * torch.randn(s, generator=g)).to(dtype)
        else:
            out[k] = (torch.randn(s, generator=g) / s[1] ** 0.5).to(dtype)
    return out


def draft_ids(vocab: int, vd: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(vocab, generator=g)[:vd].sort().values


def official_checkpoint(
    d: Path, target, vd: int = 96, *, fc_norm: bool = False, bin_file: bool = True, seed: int = 0, **cfg_extra
) -> torch.Tensor:
    """An official-layout EAGLE-3 draft for ``target`` in ``d`` (pytorch_model.bin by default, fp16 like the
    published EAGLE3 drafts); returns the draft's absolute target ids."""
    c = target.config
    H, nh, nkv = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
    hd = c.head_dim
    inter, vocab = 2 * H, c.vocab_size
    ids = draft_ids(vocab, vd, seed + 1)
    t = _tensors(
        official_shapes(H, nh * hd, nkv * hd, inter, vd, vocab, fc_norm), ids, vocab, seed, torch.float16
    )
    d.mkdir(parents=True, exist_ok=True)
    if bin_file:
        torch.save(t, d / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(t, str(d / "model.safetensors"))
    # The fields of the published EAGLE3-LLaMA3.1-Instruct-8B config.json (a LlamaConfig plus draft_vocab_size)
    # and SGLang's eagle_config.eagle_aux_hidden_state_layer_ids (layer OUTPUTS: vsd's layers minus one).
    cfg = {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_size": H,
        "intermediate_size": inter,
        "num_attention_heads": nh,
        "num_key_value_heads": nkv,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
        "rope_theta": 500000.0,
        "rope_scaling": None,
        "vocab_size": vocab,
        "draft_vocab_size": vd,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [f - 1 for f in target.feature_layers]},
    }
    if fc_norm:
        cfg["fc_norm"] = True
    cfg.update(cfg_extra)
    (d / "config.json").write_text(json.dumps(cfg))
    return ids


def speculators_checkpoint(d: Path, target, vd: int = 96, num_layers: int = 1, seed: int = 0) -> torch.Tensor:
    """A speculators-format eagle3 draft (what speculators' Eagle3DraftModel.save_pretrained writes: layers.{i},
    fc_norm.{i} with fc_norm, d2t offsets, t2d bool; config per Eagle3SpeculatorConfig) in ``d``."""
    from safetensors.torch import save_file

    c = target.config
    H, nh, nkv = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
    hd, inter, vocab = c.head_dim, 2 * H, c.vocab_size
    ids = draft_ids(vocab, vd, seed + 1)
    shapes = {
        k.replace("midlayer.", "layers.0."): s
        for k, s in official_shapes(H, nh * hd, nkv * hd, inter, vd, vocab, True).items()
    }
    for i in range(1, num_layers):
        shapes.update(
            {f"layers.{i}.{k}": s for k, s in layer_shapes(H, nh * hd, nkv * hd, inter, False).items()}
        )
    t = _tensors(shapes, ids, vocab, seed, torch.bfloat16)
    d.mkdir(parents=True, exist_ok=True)
    save_file(t, str(d / "model.safetensors"))
    cfg = {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "speculators_version": "0.9.0",
        "transformer_layer_config": {
            "model_type": "llama",
            "hidden_size": H,
            "intermediate_size": inter,
            "num_attention_heads": nh,
            "num_key_value_heads": nkv,
            "head_dim": hd,
            "num_hidden_layers": num_layers,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "vocab_size": vocab,
        },
        "draft_vocab_size": vd,
        "norm_before_residual": False,
        "norm_before_fc": False,
        "fc_norm": True,
        "norm_output": False,
        "target_hidden_size": None,
        "eagle_aux_hidden_state_layer_ids": list(target.feature_layers),
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": "tiny", "architectures": ["LlamaForCausalLM"]},
        },
    }
    (d / "config.json").write_text(json.dumps(cfg))
    return ids
