"""What every draft format shares: the checkpoint in memory, weight files, vocab maps, key maps, and the checks
of a checkpoint against the configured target (one-line :class:`UserError` naming the field or key)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vsd.errors import UserError
from vsd.files import sha256_file
from vsd.models.draft import DraftHead, HeadConfig

SAFETENSORS = "model.safetensors"
TORCH_BIN = "pytorch_model.bin"
CONFIG = "config.json"
README = "README.md"

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass
class DraftCheckpoint:
    """A draft read from any format, in vsd's terms (``state`` keys are :class:`DraftHead` names)."""

    fmt: str  # vsd | eagle3 | speculators
    hc: HeadConfig
    state: dict[str, torch.Tensor]  # trained weights; no embedding, no vocab buffers
    d2t: torch.Tensor  # (V_d,) long: absolute target ids of the draft tokens
    file_keys: dict[str, str]  # vsd name -> the key in the file (for errors)
    fields: dict[str, str]  # what -> the config field that holds it: hidden_size, vocab_size, feature_layers
    where: str  # "<config key>: <dir>", the prefix of every error about this checkpoint
    embed: torch.Tensor | None = None  # the checkpoint's own token embedding, when it ships one
    sha256: dict[str, str] = field(
        default_factory=dict
    )  # weight file -> sha256 (a warm start counts by them)
    meta: dict[str, Any] = field(default_factory=dict)  # format extras (verifier name and architecture)


# ------------------------------------------------------------------------------------------ key maps
def key_map(hc: HeadConfig, prefix: Callable[[int], str]) -> dict[str, str]:
    """vsd name -> ecosystem name. Both ecosystem layouts name the layer like HF's LlamaDecoderLayer; the
    first layer's norm of the token embedding is ``input_layernorm`` and its norm of the hidden ``hidden_norm``
    (EAGLE cnets.py, SGLang llama_eagle3.py, speculators eagle3/model_definitions.py); a later layer's one
    input norm is ``input_layernorm`` (speculators: a plain LlamaDecoderLayer), vsd's ``hidden_norm``."""
    m = {"fc.weight": "fc.weight", "norm.weight": "norm.weight", "lm_head.weight": "lm_head.weight"}
    if hc.feature_norm:  # EAGLE-3.1 per-feature norms (speculators/vLLM ``fc_norm``)
        m.update({f"feature_norms.{i}.weight": f"fc_norm.{i}.weight" for i in range(3)})
    for i in range(hc.num_layers):
        p = prefix(i)
        if i == 0:
            m["layers.0.input_norm.weight"] = f"{p}input_layernorm.weight"
            m["layers.0.hidden_norm.weight"] = f"{p}hidden_norm.weight"
        else:
            m[f"layers.{i}.hidden_norm.weight"] = f"{p}input_layernorm.weight"
        for n in _ATTN:
            m[f"layers.{i}.{n}.weight"] = f"{p}self_attn.{n}.weight"
        m[f"layers.{i}.post_attention_norm.weight"] = f"{p}post_attention_layernorm.weight"
        for n in _MLP:
            m[f"layers.{i}.mlp.{n}.weight"] = f"{p}mlp.{n}.weight"
    return m


def take(weights: dict[str, torch.Tensor], names: dict[str, str], optional: tuple[str, ...], where: str):
    """The mapped weights under vsd names. Every mapped key must be there and no key outside ``names`` and
    ``optional``: a loader that skips unknown keys (SGLang) would serve a misnamed one as a random layer."""
    extra = sorted(set(weights) - set(names.values()) - set(optional))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UserError(f"{where}: unexpected key {extra[0]!r}{more}: not a weight of this draft layout")
    missing = [k for k in names.values() if k not in weights]
    if missing:
        raise UserError(f"{where}: missing key {missing[0]!r}")
    return {v: weights[k] for v, k in names.items()}


# ------------------------------------------------------------------------------------------ files
def read_weights(d: Path, where: str) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, file name) from ``model.safetensors``, else ``pytorch_model.bin`` (``weights_only``)."""
    st, pt = d / SAFETENSORS, d / TORCH_BIN
    if st.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(st)), SAFETENSORS
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types; all mean a bad file
            raise UserError(f"{where}: {st} is unreadable ({type(e).__name__}: {_one_line(e)})") from e
    if pt.is_file():
        try:
            obj = torch.load(str(pt), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a pickle refused by weights_only or a torn file
            raise UserError(f"{where}: {pt} is unreadable ({type(e).__name__}: {_one_line(e)})") from e
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UserError(f"{where}: {pt} is not a flat state dict of tensors")
        return obj, TORCH_BIN
    if (d / f"{SAFETENSORS}.index.json").is_file():
        raise UserError(f"{where}: sharded weights ({SAFETENSORS}.index.json) are not read; merge them first")
    raise UserError(f"{where}: no {SAFETENSORS} or {TORCH_BIN}")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


@contextmanager
def new_dir(out: Path) -> Iterator[Path]:
    """A folder filled under a temporary name and renamed to ``out`` only when complete; an existing ``out`` is
    refused (an export never overwrites)."""
    out = Path(out)
    if out.exists():
        raise UserError(f"--out: {out} exists; choose a new directory (an export never overwrites)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        os.rename(tmp, out)  # atomic; fails rather than replace a folder that appeared meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_of(d: Path, names: tuple[str, ...]) -> dict[str, str]:
    return {n: sha256_file(d / n) for n in names if (d / n).is_file()}


# ------------------------------------------------------------------------------------------ vocab maps
def ids_from_offsets(d2t: torch.Tensor) -> torch.Tensor:
    """EAGLE-3's ``d2t`` holds offsets: target id = draft id + d2t[draft id] (SGLang: hot_token_id)."""
    return torch.arange(d2t.numel(), dtype=torch.long) + d2t.long().flatten()


def offsets_from_ids(ids: torch.Tensor) -> torch.Tensor:
    return ids.long().flatten() - torch.arange(ids.numel(), dtype=torch.long)


def t2d_mask(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """EAGLE-3's ``t2d``: (V,) bool, True for the target ids that are draft tokens."""
    m = torch.zeros(vocab, dtype=torch.bool)
    m[ids.long()] = True
    return m


def check_vocab(
    ids: torch.Tensor, draft_vocab: int, vocab: int, t2d: torch.Tensor | None, where: str
) -> None:
    """The draft ids are ``draft_vocab`` distinct target ids in [0, vocab), and ``t2d`` (if given) marks them."""
    if ids.numel() != draft_vocab:
        raise UserError(f"{where}: d2t has {ids.numel()} entries, draft_vocab_size is {draft_vocab}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise UserError(f"{where}: d2t maps a draft token outside the target vocabulary [0, {vocab})")
    if ids.unique().numel() != ids.numel():
        raise UserError(f"{where}: d2t maps two draft tokens to one target token")
    if t2d is not None:
        if t2d.numel() != vocab:
            raise UserError(f"{where}: t2d has {t2d.numel()} entries, the target vocabulary {vocab}")
        if not torch.equal(t2d.flatten().bool(), t2d_mask(ids, vocab)):
            raise UserError(f"{where}: t2d disagrees with d2t (it must mark exactly the draft tokens)")


def draft_ids(weights: dict[str, torch.Tensor], draft_vocab: int, vocab: int, where: str) -> torch.Tensor:
    """Absolute target ids of the draft tokens from ``d2t`` (offsets), checked against ``t2d``."""
    if "d2t" not in weights:
        if draft_vocab != vocab:
            raise UserError(
                f"{where}: missing key 'd2t' (draft_vocab_size {draft_vocab} < vocab_size {vocab})"
            )
        ids = torch.arange(vocab, dtype=torch.long)  # full draft vocab: the identity map
    else:
        d2t = weights["d2t"]
        if d2t.is_floating_point() or d2t.dtype == torch.bool:
            raise UserError(f"{where}: d2t must be an integer tensor, got {d2t.dtype}")
        ids = ids_from_offsets(d2t)
    check_vocab(ids, draft_vocab, vocab, weights.get("t2d"), where)
    return ids


# ------------------------------------------------------------------------------------------ config
def flag(cfg: dict[str, Any], name: str, supported: Any, where: str, prefix: str = "") -> None:
    """Refuse a config flag whose value selects something vsd's head does not compute."""
    value = cfg.get(name, supported)
    if value is None:
        value = supported
    if value != supported:
        raise UserError(
            f"{where}: {prefix}{name}={value!r} is not implemented by vsd's draft head (it needs {supported!r})"
        )


def require(cfg: dict[str, Any], name: str, where: str, prefix: str = "") -> Any:
    if cfg.get(name) is None:
        raise UserError(f"{where}: config.json has no {prefix}{name}")
    return cfg[name]


def llama_geometry(cfg: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """HeadConfig fields from a llama-style config dict (old ``rope_theta``/``rope_scaling`` or new
    ``rope_parameters``: transformers' LlamaConfig normalises both)."""
    from transformers import LlamaConfig

    for name in ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"):
        require(cfg, name, where, prefix)
    flag(cfg, "hidden_act", "silu", where, prefix)
    flag(cfg, "attention_bias", False, where, prefix)
    flag(cfg, "mlp_bias", False, where, prefix)
    known = {
        k: v for k, v in cfg.items() if not isinstance(v, dict) or k in ("rope_scaling", "rope_parameters")
    }
    try:
        c = LlamaConfig(**known)
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"{where}: {prefix}config is not a llama config ({_one_line(e)})") from e
    return {
        "hidden_size": int(c.hidden_size),
        "num_heads": int(c.num_attention_heads),
        "num_kv_heads": int(c.num_key_value_heads or c.num_attention_heads),
        "head_dim": int(c.head_dim),
        "intermediate_size": int(c.intermediate_size),
        "rms_norm_eps": float(c.rms_norm_eps),
        "max_position_embeddings": int(c.max_position_embeddings),
        "rope_parameters": dict(c.rope_parameters),
        "target_vocab_size": int(c.vocab_size),
    }


def rope_legacy(hc: HeadConfig) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) as the pre-transformers-5 fields SGLang and the EAGLE code read."""
    rp = dict(hc.rope_parameters)
    theta = float(rp.pop("rope_theta", 10000.0))
    return theta, (None if rp.get("rope_type", "default") == "default" else rp)


def default_feature_layers(num_layers: int) -> list[int]:
    """EAGLE-3's default: the hidden states entering layers 2, L/2 and L-3 (vsd.models.target)."""
    return [2, num_layers // 2, num_layers - 3]


# ------------------------------------------------------------------------------------------ target
def check_target(ck: DraftCheckpoint, target) -> None:
    """Hidden size, vocabulary and feature layers of the checkpoint against the configured target."""
    check_geometry(ck.hc, ck.fields, target, ck.where)


def check_geometry(hc: HeadConfig, fields: dict[str, str], target, where: str) -> None:
    """The same check from the config alone (readers run it before reading the weights)."""
    if hc.hidden_size != target.hidden_size:
        raise UserError(
            f"{where}: {fields['hidden_size']}={hc.hidden_size}, but the target {target.name} has "
            f"hidden size {target.hidden_size}"
        )
    if hc.target_vocab_size != target.vocab_size:
        raise UserError(
            f"{where}: {fields['vocab_size']}={hc.target_vocab_size}, but the target {target.name} has "
            f"vocabulary {target.vocab_size}"
        )
    if list(hc.feature_layers) != list(target.feature_layers):
        raise UserError(
            f"{where}: {fields['feature_layers']} gives feature layers {list(hc.feature_layers)} (hidden "
            f"states entering those layers), but the target {target.name} is configured with "
            f"{list(target.feature_layers)} (model.draft.feature_layers)"
        )


def read_llama_eagle3(
    fmt: str,
    d: Path,
    cfg: dict[str, Any],
    target,
    where: str,
    geo: dict[str, Any],
    layers: tuple[list[int], str],
    size_field: str,
    prefix: Callable[[int], str],
    num_layers: int = 1,
    meta: dict[str, Any] | None = None,
) -> DraftCheckpoint:
    """What the official and the speculators readers share once each has read its own config fields: the
    ``target_hidden_size`` and feature-layer checks, the head's geometry checked against ``target``, and the
    weights. ``layers``: (feature layers in vsd's numbering, the field they came from); ``size_field``: where
    the hidden size was read (named in errors)."""
    ths = cfg.get("target_hidden_size")
    if ths is not None and int(ths) != geo["hidden_size"]:
        raise UserError(
            f"{where}: target_hidden_size={ths} differs from {size_field}hidden_size={geo['hidden_size']}; "
            "vsd's draft has the target's hidden size"
        )
    feature_layers, field = layers
    if len(feature_layers) != 3:
        raise UserError(f"{where}: {field} must name 3 layers, got {len(feature_layers)}")
    draft_vocab = int(require(cfg, "draft_vocab_size", where))
    vocab = geo.pop("target_vocab_size")
    hc = HeadConfig(
        **geo,
        num_layers=num_layers,
        draft_vocab_size=draft_vocab,
        target_vocab_size=vocab,
        feature_layers=feature_layers,
        target_name=target.name,
        feature_norm=bool(cfg.get("fc_norm", False)),
    )
    fields = {
        "hidden_size": f"{size_field}hidden_size",
        "vocab_size": f"{size_field}vocab_size",
        "feature_layers": field,
    }
    check_geometry(hc, fields, target, where)
    weights, fname = read_weights(d, where)
    names = key_map(hc, prefix)
    state = take(weights, names, ("d2t", "t2d", "embed_tokens.weight"), f"{where}: {fname}")
    ids = draft_ids(weights, draft_vocab, vocab, f"{where}: {fname}")
    return DraftCheckpoint(
        fmt=fmt,
        hc=hc,
        state=state,
        d2t=ids,
        file_keys=names | {"embed_tokens.weight": "embed_tokens.weight"},
        fields=fields,
        where=where,
        embed=weights.get("embed_tokens.weight"),
        sha256=sha256_of(d, (fname, CONFIG)),
        **({"meta": meta} if meta is not None else {}),
    )


def build_head(ck: DraftCheckpoint, target, device: str | torch.device = "cpu") -> DraftHead:
    """A :class:`DraftHead` with the checkpoint's weights and vocab map and the target's frozen embedding."""
    check_target(ck, target)
    emb = target.model.get_input_embeddings().weight.detach().float()
    if ck.embed is not None:
        _check_embedding(ck, emb)
    head = DraftHead(ck.hc, emb)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    for name, t in ck.state.items():
        if name not in shapes:  # a reader bug, not the user's
            raise AssertionError(f"reader produced unknown key {name}")
        if tuple(t.shape) != shapes[name]:
            raise UserError(
                f"{ck.where}: {ck.file_keys.get(name, name)} has shape {list(t.shape)}, the config implies "
                f"{list(shapes[name])}"
            )
        if not t.is_floating_point():
            raise UserError(f"{ck.where}: {ck.file_keys.get(name, name)} is not a float tensor ({t.dtype})")
    missing, unexpected = head.load_state_dict(ck.state, strict=False)
    missing = [m for m in missing if not m.startswith(("embed_tokens.", "d2t", "t2d"))]
    assert not missing and not unexpected, (missing, unexpected)  # the readers map every trained weight
    head.set_vocab(ck.d2t)
    return head.to(device)


def _check_embedding(ck: DraftCheckpoint, target_emb: torch.Tensor) -> None:
    """vsd drafts use the target's frozen embedding. A shipped ``embed_tokens`` (SpecForge saves its frozen
    copy) must be that embedding up to the rounding of its storage dtype; anything else is refused, never
    dropped silently."""
    e = ck.embed
    name = ck.file_keys.get("embed_tokens.weight", "embed_tokens.weight")
    if e is None:
        return
    if tuple(e.shape) != tuple(target_emb.shape):
        raise UserError(
            f"{ck.where}: {name} has shape {list(e.shape)}, the target's embedding {list(target_emb.shape)}"
        )
    # bf16 keeps 8 mantissa bits: a copy stored in a 16-bit dtype differs by < 2^-7 relative
    ok = torch.allclose(e.float(), target_emb, rtol=2**-7, atol=1e-6)
    if not ok:
        raise UserError(
            f"{ck.where}: {name} differs from the target's token embedding; vsd drafts use the target's "
            "frozen embedding (remove the key to use it)"
        )
