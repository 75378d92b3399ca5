"""The frozen target model: loading (HF id, local dir, GGUF from a package, random) and a thin wrapper.

The wrapper exposes what every later stage needs: the tokenizer and chat template, logits, the fused
EAGLE-3 features (hidden states entering three chosen layers), and the stock HF KV cache. It never copies
modeling code: tree attention goes through the model's own 4D-mask / position-id / cache interfaces.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from vsd.config.schema import ModelConfig
from vsd.errors import UserError
from vsd.files import package_file, sha256_file
from vsd.models.attention import use_packed_attention
from vsd.runtime import resolve_dtype

GGUF_CONVERSION_VERSION = 1  # bump when the conversion below changes: invalidates cached copies


@dataclass
class TargetOutput:
    logits: torch.Tensor  # (B, T, V) float
    features: torch.Tensor | None  # (B, T, 3H): hidden states entering the three feature layers
    cache: object | None  # the stock HF cache (transformers 5.x `cache=`), updated in place


class Target:
    """A frozen causal LM plus tokenizer. All calls are no-grad."""

    def __init__(
        self, model, tokenizer, name: str, feature_layers: list[int] | None = None, kernel: str = "dense"
    ):
        self.model = model.eval().requires_grad_(False)
        self.kernel = kernel  # dense | int8 (vsd/models/cpu_kernels.py): part of every timing cache's key
        self.tokenizer = tokenizer
        self.name = name
        cfg = model.config
        self.config = cfg
        self.num_layers: int = cfg.num_hidden_layers
        self.hidden_size: int = cfg.hidden_size
        self.vocab_size: int = cfg.vocab_size
        L = self.num_layers
        self.feature_layers: list[int] = list(feature_layers or default_feature_layers(L))
        if not all(0 <= i <= L for i in self.feature_layers):
            raise UserError(
                f"model.draft.feature_layers: indices must lie in [0, {L}], got {self.feature_layers}"
            )

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        e = getattr(gen, "eos_token_id", None) if gen is not None else None
        if e is None:
            e = self.tokenizer.eos_token_id
        if isinstance(e, int):
            ids.add(e)
        elif e is not None:
            ids.update(int(x) for x in e)
        return ids

    # ------------------------------------------------------------------ text
    def chat_ids(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a chat (``[{"role": "user", "content": ...}, ...]``) through the chat template."""
        out = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return [int(t) for t in out]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ compute
    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache=None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_features: bool = False,
        use_cache: bool = True,
    ) -> TargetOutput:
        """One forward. ``attention_mask`` may be 2D (padding) or 4D (B, 1, q, kv) for tree attention."""
        out = self.model(
            input_ids=input_ids,
            cache=cache,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            output_hidden_states=output_features,
        )
        feats = self.features_from_hidden(out.hidden_states) if output_features else None
        return TargetOutput(out.logits, feats, out.cache)

    def features_from_hidden(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """hidden_states[i] is the input of layer i (0 = embeddings): (B, T, 3H)."""
        return torch.cat([hidden_states[i] for i in self.feature_layers], dim=-1)


def default_feature_layers(num_layers: int) -> list[int]:
    """EAGLE-3: hidden states entering layers 2, L/2 and L-3."""
    return [2, num_layers // 2, num_layers - 3]


# ====================================================================== loading
def load_target(mcfg: ModelConfig, cache_dir: str | os.PathLike, device: str, dtype: str) -> Target:
    """Load the configured target, frozen, on ``device`` in ``dtype`` (see vsd.runtime.resolve_dtype)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype, mcfg.source, device)
    # the architecture with random weights: no files, no hub (vsd/models/architecture.py)
    if mcfg.random_init:
        from vsd.models.architecture import build_random_architecture

        model, tok = build_random_architecture(mcfg, device, torch_dtype)
    elif mcfg.source == "random":
        from vsd.models.tiny import build_random_target

        model, tok = build_random_target(mcfg)
        model = model.to(device=device, dtype=torch_dtype)
    elif mcfg.source == "gguf":
        local = ensure_converted_gguf(mcfg, Path(cache_dir))
        tok = AutoTokenizer.from_pretrained(local)
        model = _from_pretrained(AutoModelForCausalLM, local, dtype=torch_dtype, device=device)
    else:
        path = _resolve_hf(mcfg)
        tok = AutoTokenizer.from_pretrained(
            path, revision=mcfg.revision, trust_remote_code=mcfg.trust_remote_code
        )
        model = _from_pretrained(
            AutoModelForCausalLM,
            path,
            dtype=torch_dtype,
            device=device,
            revision=mcfg.revision,
            trust_remote_code=mcfg.trust_remote_code,
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    use_packed_attention(model)  # a verify's queries read the KV cache in place (vsd/models/attention.py)
    return Target(model, tok, mcfg.name, mcfg.draft.feature_layers)


def _from_pretrained(cls, path, dtype, device, **kw):
    return cls.from_pretrained(path, dtype=dtype, **kw).to(device)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _resolve_hf(mcfg: ModelConfig) -> str:
    """A local dir as is; a hub id from the local HF cache, else from the hub if reachable."""
    hf_id = mcfg.hf_id
    assert hf_id is not None
    p = Path(hf_id).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise UserError(f"model.hf_id: {p} has no config.json (not a HF model directory)")
        return str(p)
    if hf_id.startswith(("/", "./", "~")):
        raise UserError(f"model.hf_id: local model directory {hf_id} does not exist")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(hf_id, "config.json", revision=mcfg.revision)
    if isinstance(cached, str):
        return hf_id
    if not _hub_reachable():
        raise UserError(
            f"model.hf_id: {hf_id!r} is not in the local HF cache and the hub is unreachable; "
            f"download it where the hub is reachable (`hf download {hf_id}`) and copy the cache, "
            "or set model.hf_id=/path/to/local/dir"
        )
    return hf_id


# ---------------------------------------------------------------------- GGUF -> bf16 safetensors copy
def gguf_path(mcfg: ModelConfig) -> Path:
    assert mcfg.gguf_file is not None
    f = Path(mcfg.gguf_file).expanduser()
    if f.is_absolute():
        if not f.exists():
            raise UserError(f"model.gguf_file: {f} does not exist")
        return f
    if not mcfg.gguf_package:
        raise UserError("model.gguf_package: needed to find a relative model.gguf_file")
    return package_file(mcfg.gguf_package, mcfg.gguf_file, "model.gguf_package")


def ensure_converted_gguf(mcfg: ModelConfig, cache_dir: Path) -> Path:
    """Convert the GGUF once into a bf16 safetensors HF dir keyed by the GGUF's sha256; verify it on reuse."""
    src = gguf_path(mcfg)
    digest = sha256_file(src)
    dest = cache_dir / "models" / f"{src.stem}-{digest[:16]}-v{GGUF_CONVERSION_VERSION}-bf16"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.exists():
            verify_converted(dest)
            return dest
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _convert(src, tmp, digest)
            os.replace(tmp, dest)  # atomic: a half-written copy never has the final name
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _convert(src: Path, out: Path, digest: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    print(f"[vsd] converting {src.name} to a bf16 safetensors copy (once) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models while the quantizer markers are set; the weights are
    # already plain dequantised tensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(out.glob("*.safetensors"))
    }
    manifest = {"source": str(src), "source_sha256": digest, "files": files, "seconds": time.time() - t0}
    (out / "vsd_manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"[vsd] converted in {time.time() - t0:.1f}s -> {out}", flush=True)


def verify_converted(dest: Path) -> None:
    """Sizes and sha256 of the cached weights against the manifest written at conversion time."""
    man = dest / "vsd_manifest.json"
    if not man.exists():
        raise UserError(
            f"cached model copy {dest} is incomplete (no vsd_manifest.json); delete it to rebuild"
        )
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise UserError(f"cached model copy {dest}: unreadable manifest ({e}); delete it to rebuild") from e
    for name, meta in files.items():
        p = dest / name
        if not p.exists() or p.stat().st_size != meta["size"] or sha256_file(p) != meta["sha256"]:
            raise UserError(
                f"cached model copy {p} is corrupt (size or sha256 mismatch); delete {dest} to rebuild"
            )
