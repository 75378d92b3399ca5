"""A tiny random llama with a byte-level tokenizer: self-contained, for fast tests only."""

from __future__ import annotations

import torch

from vsd.config.schema import ModelConfig

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<|end|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"]


def byte_tokenizer():
    """256 byte tokens + a few specials; vocab 261. No files, no training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|end|>", pad_token="<|pad|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[2:]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_random_target(mcfg: ModelConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    r = mcfg.random
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=r.hidden_size,
        intermediate_size=r.intermediate_size,
        num_hidden_layers=r.num_layers,
        num_attention_heads=r.num_heads,
        num_key_value_heads=r.num_kv_heads,
        max_position_embeddings=r.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(r.init_seed)
        model = LlamaForCausalLM(cfg)
        # Larger init than the default: a random model with std 0.02 is near-uniform; a peaked one makes
        # greedy/ sampling tests meaningful (distinct argmaxes, non-trivial acceptance).
        with torch.no_grad():
            model.model.embed_tokens.weight.normal_(0.0, 1.0)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
