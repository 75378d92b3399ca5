"""A target of a given architecture with random weights (``model.random_init=true``): no weights, no hub.

What it is for: the costs of a large target (feature tokens/s, training memory, AR and tree-verify latency)
are those of its shapes, not of its weights, so an 8B architecture can be measured on a GPU that has no copy of
the 8B weights. τ measured with it means nothing. The tokenizer is the built-in byte tokenizer
(vsd/models/tiny.py); its 261 ids lie inside the architecture's vocabulary, which keeps its published size
(the LM head's cost depends on it).
"""

from __future__ import annotations

import torch

from vsd.config.schema import ArchitectureConfig, ModelConfig


def architecture_config(arch: ArchitectureConfig, tok=None):
    """The transformers config of ``arch`` (its ``model_type``'s config class)."""
    from transformers import AutoConfig

    kw = dict(
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        max_position_embeddings=arch.max_position_embeddings,
        rms_norm_eps=arch.rms_norm_eps,
        rope_parameters=dict(arch.rope),
        tie_word_embeddings=arch.tie_word_embeddings,
    )
    if arch.head_dim is not None:
        kw["head_dim"] = arch.head_dim
    if tok is not None:
        kw.update(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    return AutoConfig.for_model(arch.model_type, **kw)


def build_random_architecture(mcfg: ModelConfig, device: str, dtype: torch.dtype):
    """(model, tokenizer): ``mcfg.architecture`` initialised (transformers' own init, seeded by
    ``architecture.init_seed``) directly on ``device`` in ``dtype``, so an 8B model never passes through host
    memory in float32."""
    from transformers import AutoModelForCausalLM

    from vsd.models.tiny import byte_tokenizer

    assert mcfg.architecture is not None
    tok = byte_tokenizer()
    cfg = architecture_config(mcfg.architecture, tok)
    devices = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(mcfg.architecture.init_seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
