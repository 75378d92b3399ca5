"""The target loader: real default model, cache conversion, clear errors."""

import json
import shutil

import pytest
import torch

from vsd.config import compose
from vsd.errors import UserError
from vsd.models.target import default_feature_layers, ensure_converted_gguf, load_target, verify_converted
from vsd.runtime import resolve_dtype


def test_default_target_answers_greedily(default_target):
    t = default_target
    assert t.dtype == resolve_dtype("auto", "gguf", "cpu") and t.num_layers == 30 and t.hidden_size == 576
    ids = t.chat_ids([{"role": "user", "content": "What is the capital of France?"}])
    out = t.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert t.decode(out[0, len(ids) :].tolist()).startswith("The capital of France is Paris.")


def test_features_are_the_three_layer_inputs(tiny_target):
    t = tiny_target
    x = torch.tensor([[1, 2, 3, 4]])
    o = t.forward(x, output_features=True, use_cache=False)
    hs = t.model(input_ids=x, output_hidden_states=True).hidden_states
    assert o.features.shape == (1, 4, 3 * t.hidden_size)
    torch.testing.assert_close(o.features[..., : t.hidden_size], hs[t.feature_layers[0]])
    assert default_feature_layers(30) == [2, 15, 27]


def test_cached_copy_reused_and_corruption_detected(tmp_path):
    _, cfg = compose([])[0]
    src = ensure_converted_gguf(cfg.model, __import__("pathlib").Path(cfg.paths.cache_dir))
    # A copy of the user-cache conversion under a temp cache: corrupt its weights, expect a clear error.
    dest = tmp_path / "models" / src.name
    shutil.copytree(src, dest)
    verify_converted(dest)
    w = next(dest.glob("*.safetensors"))
    with open(w, "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\x00" * 16)
    with pytest.raises(UserError, match="corrupt"):
        load_target(cfg.model, tmp_path, "cpu", "auto")
    (dest / "vsd_manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="manifest"):
        verify_converted(dest)
    assert json.loads((src / "vsd_manifest.json").read_text())["files"]


def test_missing_gguf_file_names_it():
    _, cfg = compose(["model.gguf_file=Nope.gguf"])[0]
    with pytest.raises(UserError, match="Nope.gguf"):
        load_target(cfg.model, "/tmp/vsd-none", "cpu", "auto")


def test_missing_gguf_package_names_it():
    _, cfg = compose(["model.gguf_package=not_a_pkg_xyz"])[0]
    with pytest.raises(UserError, match="not_a_pkg_xyz"):
        load_target(cfg.model, "/tmp/vsd-none", "cpu", "auto")


def test_unreachable_hub_id_offline_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, cfg = compose(["model=llama31_8b"])[0]
    with pytest.raises(UserError, match="meta-llama/Llama-3.1-8B-Instruct.*local"):
        load_target(cfg.model, "/tmp/vsd-none", "cpu", "auto")


def test_missing_local_dir_names_it(tmp_path):
    _, cfg = compose(["model=llama31_8b", f"model.hf_id={tmp_path}/nowhere"])[0]
    with pytest.raises(UserError, match="nowhere"):
        load_target(cfg.model, "/tmp/vsd-none", "cpu", "auto")


def test_cuda_requested_without_cuda_is_clear():
    from vsd.runtime import resolve_device

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(UserError, match="device"):
        resolve_device("cuda")
