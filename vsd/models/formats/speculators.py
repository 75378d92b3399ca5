"""The ``speculators`` eagle3 format (vllm-project/speculators; what vLLM loads as a speculators model).

``config.json``: ``speculators_model_type: "eagle3"``, ``architectures: ["Eagle3Speculator"]``, the decoder
layer's llama config in ``transformer_layer_config``, ``draft_vocab_size``, ``target_hidden_size``,
``eagle_aux_hidden_state_layer_ids`` (vLLM's meaning: the hidden state entering layer i, vsd's), the flags
``norm_before_residual`` (vLLM reads a missing one as true), ``norm_before_fc``, ``fc_norm``, ``norm_output``,
and ``speculators_config`` (algorithm, proposal methods, the verifier's name and architecture). Weights:
``layers.{i}.*``, ``fc``, ``norm``, ``lm_head``, ``d2t`` (offsets), ``t2d`` (bool), ``fc_norm.{i}`` with
``fc_norm``, optional ``embed_tokens`` (else the verifier's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vsd.errors import UserError
from vsd.models.draft import HeadConfig
from vsd.models.formats.common import (
    CONFIG,
    SAFETENSORS,
    DraftCheckpoint,
    default_feature_layers,
    flag,
    key_map,
    llama_geometry,
    offsets_from_ids,
    read_llama_eagle3,
    t2d_mask,
)

SPECULATORS_VERSION = "0.9.0"  # the release whose Eagle3DraftModel the export is tested against
LAYER_CONFIG = "transformer_layer_config"
AUX_IDS = "eagle_aux_hidden_state_layer_ids"


def is_speculators(cfg: dict[str, Any]) -> bool:
    return "speculators_model_type" in cfg


def _prefix(i: int) -> str:
    return f"layers.{i}."


def read(d: Path, cfg: dict[str, Any], target, where: str) -> DraftCheckpoint:
    flag(cfg, "speculators_model_type", "eagle3", where)
    tl = cfg.get(LAYER_CONFIG)
    if not isinstance(tl, dict):
        raise UserError(f"{where}: config.json has no {LAYER_CONFIG} object")
    lp = f"{LAYER_CONFIG}."
    flag(tl, "model_type", "llama", where, lp)  # qwen3 layers add q/k norms vsd's head does not have
    geo = llama_geometry(tl, where, lp)
    num_layers = int(tl.get("num_hidden_layers") or 1)
    for name in ("norm_before_residual", "norm_before_fc", "norm_output"):
        flag(cfg, name, False, where)
    if cfg.get(AUX_IDS):
        layers, field = [int(i) for i in cfg[AUX_IDS]], AUX_IDS
    else:
        layers, field = default_feature_layers(target.num_layers), f"{AUX_IDS} (absent: EAGLE-3's default)"
    spec = cfg.get("speculators_config")
    verifier = spec.get("verifier") if isinstance(spec, dict) else None
    meta = {"verifier": verifier if isinstance(verifier, dict) else {}}
    return read_llama_eagle3(
        "speculators", d, cfg, target, where, geo, (layers, field), lp, _prefix, num_layers, meta
    )


def layer_config(hc: HeadConfig) -> dict[str, Any]:
    """The decoder layer's llama config, as transformers writes it (speculators serialises a LlamaConfig)."""
    from transformers import LlamaConfig

    c = LlamaConfig(
        hidden_size=hc.hidden_size,
        intermediate_size=hc.intermediate_size,
        num_attention_heads=hc.num_heads,
        num_key_value_heads=hc.num_kv_heads,
        head_dim=hc.head_dim,
        num_hidden_layers=hc.num_layers,
        hidden_act="silu",
        rms_norm_eps=hc.rms_norm_eps,
        max_position_embeddings=hc.max_position_embeddings,
        rope_parameters=dict(hc.rope_parameters),
        vocab_size=hc.target_vocab_size,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
    )
    out = c.to_dict()
    out["architectures"] = ["LlamaForCausalLM"]
    return out


def write(
    ck: DraftCheckpoint, out: Path, verifier: str, verifier_arch: str, speculative_tokens: int
) -> dict[str, Any]:
    """Write ``config.json`` and ``model.safetensors`` of the speculators eagle3 format into ``out``."""
    from safetensors.torch import save_file

    hc = ck.hc
    names = key_map(hc, _prefix)
    assert set(names) == set(ck.state), sorted(set(names) ^ set(ck.state))
    tensors = {names[k]: v.detach().contiguous().cpu() for k, v in ck.state.items()}
    tensors["d2t"] = offsets_from_ids(ck.d2t)
    tensors["t2d"] = t2d_mask(ck.d2t, hc.target_vocab_size)
    save_file(tensors, str(out / SAFETENSORS), metadata={"format": "pt"})
    config = {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "speculators_version": SPECULATORS_VERSION,
        LAYER_CONFIG: layer_config(hc),
        "draft_vocab_size": hc.draft_vocab_size,
        "target_hidden_size": hc.hidden_size,
        AUX_IDS: list(hc.feature_layers),
        "norm_before_residual": False,  # vLLM reads a missing flag as true (configs/speculators/algos.py)
        "norm_before_fc": False,
        "fc_norm": hc.feature_norm,
        "norm_output": False,
        "embed_requires_grad": False,
        "torch_dtype": str(ck.state["fc.weight"].dtype).removeprefix("torch."),
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": speculative_tokens}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier, "architectures": [verifier_arch]},
        },
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return config
