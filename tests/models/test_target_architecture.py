"""model.random_init=true: the Llama-3.1-8B and Qwen3-8B architectures built from their config fields with random
weights (no weights, no hub). Shrunken copies run on the CPU; the full-size ones are counted on the meta
device against the published parameter counts."""

import pytest
import torch

from vsd.config import compose
from vsd.errors import ConfigError
from vsd.models.architecture import architecture_config
from vsd.models.target import load_target

SMALL = [
    "model.random_init=true",
    "model.architecture.num_layers=5",
    "model.architecture.hidden_size=64",
    "model.architecture.intermediate_size=96",
    "model.architecture.num_heads=4",
    "model.architecture.num_kv_heads=2",
    "model.architecture.head_dim=16",
]
# name -> (transformers class, published parameter count, vocab, rope type)
ARCHS = {
    "llama31_8b": ("LlamaForCausalLM", 8_030_261_248, 128256, "llama3"),
    "qwen3_8b": ("Qwen3ForCausalLM", 8_190_735_360, 151936, "default"),
}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_full_size_architecture_has_the_published_parameter_count(name):
    from transformers import AutoModelForCausalLM

    _, cfg = compose([f"model={name}", "model.random_init=true"])[0]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(architecture_config(cfg.model.architecture))
    cls, params, vocab, rope = ARCHS[name]
    assert type(model).__name__ == cls
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.config.vocab_size == vocab and model.config.rope_parameters["rope_type"] == rope


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_shrunken_architecture_is_a_working_target(name, tmp_path):
    _, cfg = compose([f"model={name}", *SMALL])[0]
    target = load_target(cfg.model, tmp_path, "cpu", "float32")
    cls, _, vocab, rope = ARCHS[name]
    assert type(target.model).__name__ == cls and target.vocab_size == vocab
    assert target.model.config.rope_parameters["rope_type"] == rope
    assert target.num_layers == 5 and target.hidden_size == 64 and target.feature_layers == [2, 2, 2]
    if name == "qwen3_8b":  # Qwen3's per-head q/k norms are there
        assert target.model.model.layers[0].self_attn.q_norm.weight.shape == (16,)
    ids = torch.tensor([target.chat_ids([{"role": "user", "content": "hi"}])])
    out = target.forward(ids, use_cache=False, output_features=True)
    assert out.logits.shape == (1, ids.shape[1], vocab) and out.features.shape == (1, ids.shape[1], 3 * 64)
    assert torch.isfinite(out.logits).all()
    # seeded: the same config gives the same weights, another init_seed other weights
    again = load_target(cfg.model, tmp_path, "cpu", "float32")
    w = next(target.model.parameters())
    assert torch.equal(w, next(again.model.parameters()))
    _, other = compose([f"model={name}", *SMALL, "model.architecture.init_seed=1"])[0]
    assert not torch.equal(w, next(load_target(other.model, tmp_path, "cpu", "float32").model.parameters()))


def test_random_init_needs_an_architecture():
    with pytest.raises(ConfigError, match="model.architecture: required"):
        compose(["model=vicuna_13b", "model.random_init=true"])
    with pytest.raises(ConfigError, match="model.architecture.num_kv_heads"):
        compose(["model=llama31_8b", "model.architecture.num_kv_heads=5"])
