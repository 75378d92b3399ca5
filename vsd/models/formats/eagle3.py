"""The official EAGLE-3 layout: the drafts SafeAILab/EAGLE publishes (``EAGLE3-*``), what SpecForge writes, what
SGLang (``LlamaForCausalLMEagle3``) and the EAGLE code load.

``config.json``: a llama config with ``architectures: ["LlamaForCausalLMEagle3"]``, ``draft_vocab_size``,
optional ``target_hidden_size``, ``eagle_config.eagle_aux_hidden_state_layer_ids`` (SGLang's meaning: the
OUTPUT of layer i, i.e. the hidden state entering layer i + 1, so vsd's feature layer = id + 1) and the
EAGLE-3.1 flags ``norm_before_fc`` / ``fc_norm`` / ``norm_output``. Weights (``model.safetensors`` or
``pytorch_model.bin``): ``midlayer.*``, ``fc``, ``norm``, ``lm_head``, ``d2t`` (int64 offsets: target id =
draft id + d2t[draft id]), ``t2d`` (bool over the target vocab), optional ``embed_tokens``, and ``fc_norm.{i}``
when ``fc_norm`` is on (vsd's ``feature_norm``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vsd.errors import UserError
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
    require,
    rope_legacy,
    t2d_mask,
)

ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM")  # SGLang / EAGLE, vLLM's own name
AUX_IDS = "eagle_config.eagle_aux_hidden_state_layer_ids"


def is_eagle3(cfg: dict[str, Any]) -> bool:
    return any(a in ARCHITECTURES for a in cfg.get("architectures") or [])


def _prefix(i: int) -> str:
    return "midlayer."


def read(d: Path, cfg: dict[str, Any], target, where: str) -> DraftCheckpoint:
    """An official-layout checkpoint as a :class:`DraftCheckpoint` (checked against ``target`` later)."""
    flag(cfg, "model_type", "llama", where)
    geo = llama_geometry(cfg, where)
    require(cfg, "draft_vocab_size", where)  # SGLang: absent = full vocab, target's head (not vsd's layout)
    flag(cfg, "num_hidden_layers", 1, where)  # EAGLE/SpecForge: one midlayer
    for name in ("norm_before_fc", "norm_output", "norm_before_residual", "tie_word_embeddings", "bias"):
        flag(cfg, name, False, where)
    ecfg = cfg.get("eagle_config") or {}
    if not isinstance(ecfg, dict):
        raise UserError(f"{where}: eagle_config must be an object")
    flag(ecfg, "use_aux_hidden_state", True, where, "eagle_config.")
    if ecfg.get("eagle_aux_hidden_state_layer_ids") is not None:
        layers, field = [int(i) + 1 for i in ecfg["eagle_aux_hidden_state_layer_ids"]], AUX_IDS
    elif cfg.get(
        "eagle_aux_hidden_state_layer_ids"
    ):  # vLLM's top-level field: the layer whose INPUT is taken
        layers, field = (
            [int(i) for i in cfg["eagle_aux_hidden_state_layer_ids"]],
            "eagle_aux_hidden_state_layer_ids",
        )
    else:
        layers, field = default_feature_layers(target.num_layers), f"{AUX_IDS} (absent: EAGLE-3's default)"
    return read_llama_eagle3("eagle3", d, cfg, target, where, geo, (layers, field), "", _prefix)


def write(ck: DraftCheckpoint, out: Path) -> dict[str, Any]:
    """Write ``config.json`` and ``model.safetensors`` of the official layout into ``out``; returns the config.

    Only what SGLang's LlamaForCausalLMEagle3 and the EAGLE code read: no embedding (both take the target's),
    d2t as offsets, t2d as a bool mask."""
    from safetensors.torch import save_file

    hc = ck.hc
    if hc.num_layers != 1:
        raise UserError(
            f"--to eagle3: the official layout holds one decoder layer (midlayer); this draft has "
            f"{hc.num_layers} (export it with --to speculators)"
        )
    if min(hc.feature_layers) < 1:
        raise UserError(
            f"--to eagle3: feature layer 0 (the embeddings) has no id in {AUX_IDS} (it names layer outputs)"
        )
    names = key_map(hc, _prefix)
    assert set(names) == set(ck.state), sorted(set(names) ^ set(ck.state))
    tensors = {names[k]: v.detach().contiguous().cpu() for k, v in ck.state.items()}
    tensors["d2t"] = offsets_from_ids(ck.d2t)
    tensors["t2d"] = t2d_mask(ck.d2t, hc.target_vocab_size)
    save_file(tensors, str(out / SAFETENSORS), metadata={"format": "pt"})
    theta, scaling = rope_legacy(hc)
    dtype = str(ck.state["fc.weight"].dtype).removeprefix("torch.")
    config = {
        "architectures": [ARCHITECTURES[0]],
        "model_type": "llama",
        "hidden_size": hc.hidden_size,
        "intermediate_size": hc.intermediate_size,
        "num_attention_heads": hc.num_heads,
        "num_key_value_heads": hc.num_kv_heads,
        "head_dim": hc.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "rms_norm_eps": hc.rms_norm_eps,
        "max_position_embeddings": hc.max_position_embeddings,
        "rope_theta": theta,
        "rope_scaling": scaling,
        "vocab_size": hc.target_vocab_size,
        "draft_vocab_size": hc.draft_vocab_size,
        "tie_word_embeddings": False,  # SGLang: true would serve embed_tokens as the LM head
        "attention_bias": False,
        "mlp_bias": False,
        "pretraining_tp": 1,  # the EAGLE code's LlamaMLP reads it
        "torch_dtype": dtype,
        "fc_norm": hc.feature_norm,
        "eagle_config": {
            "eagle_aux_hidden_state_layer_ids": [f - 1 for f in hc.feature_layers],
            "use_aux_hidden_state": True,
        },
    }
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return config
