"""EAGLE-3 draft head: feature fusion, one decoder layer over [norm(embedding); norm(hidden)], draft-vocab LM head.

Token/feature alignment (see docs/training.md). ``h_t`` is the target's hidden state at position t (it has
seen x_0..x_t). Draft step 0 at position t takes ``[emb(x_{t+1}); fuse(h_t)]`` at rotary position t and
predicts x_{t+2}. Training-time-test step k >= 1 at position t takes ``[emb(x_{t+k+1}); g^{k-1}_t]`` (g is the
head's own pre-norm hidden output of step k-1), sits at rotary position t+k, attends to the step-0 keys at
positions <= t and to its own steps 1..k at position t (the diagonal), and predicts x_{t+k+2}. In decoding this
is exactly a depth-(k+1) tree node over a KV cache of committed positions.

Only the fusion, the decoder layer(s), the norms and the LM head are trained; the token embedding is the
target's, frozen, and is not saved with the draft (it is copied from the target at load time).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from vsd.errors import UserError
from vsd.files import sha256_file
from vsd.models.attention import packed_sdpa

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.safetensors"


def shift_left(x: torch.Tensor, n: int) -> torch.Tensor:
    """x (B, T, ...) -> y with y[:, t] = x[:, t + n], zero/False past the end: the head's input alignment
    (step k at position t reads token x_{t+k+1}: ``shift_left(input_ids, k + 1)``)."""
    if n == 0:
        return x
    pad = torch.zeros_like(x[:, :n])
    return torch.cat([x[:, n:], pad], dim=1)


@dataclass
class HeadConfig:
    """Geometry of the draft head (derived from the target config and ``model.draft``)."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_layers: int
    draft_vocab_size: int
    target_vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default"})
    feature_layers: list[int] = field(default_factory=list)
    target_name: str = ""
    feature_norm: bool = True  # RMSNorm each of the three feature blocks before the fusion (see fuse)

    @classmethod
    def from_target(cls, target, dcfg, draft_vocab_size: int | None = None) -> HeadConfig:
        """``target``: vsd.models.target.Target; ``dcfg``: schema.DraftHeadConfig."""
        c = target.config
        h = c.hidden_size
        nh = c.num_attention_heads
        rope = getattr(c, "rope_parameters", None) or {
            "rope_type": "default",
            "rope_theta": getattr(c, "rope_theta", 10000.0),
        }
        return cls(
            hidden_size=h,
            num_heads=nh,
            num_kv_heads=getattr(c, "num_key_value_heads", None) or nh,
            head_dim=getattr(c, "head_dim", None) or h // nh,
            intermediate_size=dcfg.intermediate_size or c.intermediate_size,
            num_layers=dcfg.num_layers,
            draft_vocab_size=draft_vocab_size or dcfg.vocab_size,
            target_vocab_size=c.vocab_size,
            rms_norm_eps=c.rms_norm_eps,
            max_position_embeddings=c.max_position_embeddings,
            rope_parameters=dict(rope),
            feature_layers=list(target.feature_layers),
            target_name=target.name,
            feature_norm=dcfg.feature_norm,
        )

    def rope_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters=dict(self.rope_parameters),
        )


# ------------------------------------------------------------------------------------------ caches
class TTTCache:
    """Training-time-test keys/values, per layer: step-0 K/V over all positions plus one diagonal per step.

    The first ``step`` call on an empty cache stores the step-0 K/V (causal attention over positions);
    every later call appends the diagonal entries (each position's own key of that step).
    """

    def __init__(self, num_layers: int, key_padding_mask: torch.Tensor | None = None):
        self.base: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.diag: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(num_layers)]
        self.key_padding_mask = key_padding_mask  # (B, T) bool, True = real token

    @property
    def num_steps(self) -> int:
        return 0 if self.base[0] is None else 1 + len(self.diag[0])


class KVCache:
    """A plain append-only KV cache for decoding: per layer K/V (B, kv_heads, S, head_dim); crop to drop."""

    def __init__(self, num_layers: int):
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers

    def __len__(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = torch.cat([self.k[layer], k], dim=2)
            self.v[layer] = torch.cat([self.v[layer], v], dim=2)
        return self.k[layer], self.v[layer]

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions."""
        for i in range(len(self.k)):
            if self.k[i] is not None:
                self.k[i] = self.k[i][:, :, :length]
                self.v[i] = self.v[i][:, :, :length]


class AnchorTreeCache:
    """Draft keys/values for many draft trees hanging off anchors of the same sequences (the VSD tree E-step
    and the reference evaluator draft every anchor's tree at once, as decoding would one at a time).

    The first ``step`` stores the step-0 K/V over every position (causal, ``key_padding_mask``) as the base:
    position t is the committed entry [emb(x_{t+1}); fuse(h_t)]. Every later call adds tree nodes. Before it,
    the caller sets ``limit`` (B, R) long (row r sees base positions <= limit[b, r], i.e. the anchor's committed
    prefix) and ``ancestors`` (B, R, m) long (node-store slots of the row's tree ancestors, -1 = none). The new
    rows' K/V go to the node store at slots [size, size + R), and each row also sees itself. Attention costs
    R x (T + m + 1) per call, not the (R + T)^2 of one big tree mask.
    """

    def __init__(self, num_layers: int, key_padding_mask: torch.Tensor | None = None):
        self.base: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.nodes: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.key_padding_mask = key_padding_mask  # (B, T) bool, True = real token
        self.limit: torch.Tensor | None = None
        self.ancestors: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """Tree nodes stored so far (slots 0..size-1)."""
        return 0 if self.nodes[0] is None else self.nodes[0][0].shape[2]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        if self.base[layer] is None:  # step 0: causal over the positions
            self.base[layer] = (k, v)
            return _dense_attention(q, k, v, self.key_padding_mask)
        assert self.limit is not None and self.ancestors is not None, "set limit and ancestors first"
        rep = q.shape[1] // k.shape[1]
        scale = 1.0 / math.sqrt(q.shape[-1])
        k0, v0 = (_repeat_kv(x, rep) for x in self.base[layer])  # (B, nh, T, hd)
        s0 = (q @ k0.transpose(-1, -2)) * scale  # (B, nh, R, T)
        cols = torch.arange(k0.shape[2], device=q.device)
        ok = cols[None, None, :] <= self.limit[:, :, None]
        if self.key_padding_mask is not None:
            ok = ok & self.key_padding_mask[:, None, :].bool()
        neg = torch.finfo(s0.dtype).min
        s0 = s0.masked_fill(~ok[:, None], neg)
        parts_s, parts_v = [s0], []
        anc = self.ancestors
        if anc.shape[-1] and self.nodes[layer] is not None:
            nk, nv = self.nodes[layer]  # (B, nkv, N, hd)
            B, R, m = anc.shape
            idx = anc.clamp(min=0).reshape(B, 1, R * m, 1).expand(B, nk.shape[1], R * m, nk.shape[3])
            ak = _repeat_kv(nk.gather(2, idx).view(B, nk.shape[1], R, m, -1), rep)  # (B, nh, R, m, hd)
            av = _repeat_kv(nv.gather(2, idx).view(B, nv.shape[1], R, m, -1), rep)
            sa = (q.unsqueeze(-2) * ak).sum(-1) * scale  # (B, nh, R, m)
            parts_s.append(sa.masked_fill((anc < 0)[:, None], neg))
            parts_v.append(av)
        kr, vr = _repeat_kv(k, rep), _repeat_kv(v, rep)
        parts_s.append((q * kr).sum(-1, keepdim=True) * scale)  # itself
        p = torch.softmax(torch.cat(parts_s, dim=-1).float(), dim=-1).to(q.dtype)
        t0 = k0.shape[2]
        out = p[..., :t0] @ v0 + p[..., -1:] * vr
        if parts_v:
            out = out + (p[..., t0:-1].unsqueeze(-1) * parts_v[0]).sum(-2)
        prev = self.nodes[layer]
        self.nodes[layer] = (
            (k, v) if prev is None else (torch.cat([prev[0], k], dim=2), torch.cat([prev[1], v], dim=2))
        )
        return out


# ------------------------------------------------------------------------------------------ layers
class _MLP(nn.Module):
    def __init__(self, h: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(h, inter, bias=False)
        self.up_proj = nn.Linear(h, inter, bias=False)
        self.down_proj = nn.Linear(inter, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DraftLayer(nn.Module):
    """Pre-norm decoder layer. The first layer's attention input is [norm(emb); norm(hidden)] (2H wide);
    its residual stream is the hidden. Later layers (num_layers > 1) are ordinary H-wide layers."""

    def __init__(self, hc: HeadConfig, first: bool):
        super().__init__()
        h, hd = hc.hidden_size, hc.head_dim
        self.first = first
        self.nh, self.nkv, self.hd = hc.num_heads, hc.num_kv_heads, hd
        in_dim = 2 * h if first else h
        if first:
            self.input_norm = LlamaRMSNorm(h, eps=hc.rms_norm_eps)  # on the token embedding
        self.hidden_norm = LlamaRMSNorm(h, eps=hc.rms_norm_eps)
        self.q_proj = nn.Linear(in_dim, hc.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(in_dim, hc.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(in_dim, hc.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(hc.num_heads * hd, h, bias=False)
        self.post_attention_norm = LlamaRMSNorm(h, eps=hc.rms_norm_eps)
        self.mlp = _MLP(h, hc.intermediate_size)

    def forward(
        self,
        hidden: torch.Tensor,
        emb: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        layer_idx: int,
        cache: TTTCache | KVCache | AnchorTreeCache | None,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        b, t, _ = hidden.shape
        x = self.hidden_norm(hidden)
        if self.first:
            x = torch.cat([self.input_norm(emb), x], dim=-1)
        q = self.q_proj(x).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if isinstance(cache, TTTCache):
            o = _ttt_attention(q, k, v, cache, layer_idx, attn_mask)
        elif isinstance(cache, AnchorTreeCache):
            o = cache.attend(q, k, v, layer_idx)
        else:
            if cache is not None:  # KVCache, or the static-slot cache of the graph draft runner
                k, v = cache.append(layer_idx, k, v)
            o = _dense_attention(q, k, v, attn_mask)
        o = o.transpose(1, 2).reshape(b, t, self.nh * self.hd)
        hidden = hidden + self.o_proj(o)
        return hidden + self.mlp(self.post_attention_norm(hidden))


def _repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if n == 1 else x.repeat_interleave(n, dim=1)


def _causal_mask(q_len: int, kv_len: int, device, dtype, key_padding: torch.Tensor | None) -> torch.Tensor:
    """Additive (B|1, 1, q, kv) mask: query i (the last q_len of kv_len positions) sees keys <= its position."""
    qi = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    allowed = torch.arange(kv_len, device=device)[None, :] <= qi
    allowed = allowed[None, None]
    if key_padding is not None:
        allowed = allowed & key_padding[:, None, None, :].to(torch.bool)
    m = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return m.masked_fill(~allowed, torch.finfo(dtype).min)


def _dense_attention(q, k, v, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """q (B,nh,Tq,hd), k/v (B,nkv,Tk,hd). ``attn_mask``: additive 4D, or (B,Tk) bool key padding, or None
    (causal, queries being the last Tq of the Tk positions)."""
    if attn_mask is None or attn_mask.dim() == 2:
        attn_mask = _causal_mask(q.shape[2], k.shape[2], q.device, q.dtype, attn_mask)
    return packed_sdpa(q, k, v, attn_mask.to(q.dtype))  # KV heads read in place (vsd/models/attention.py)


def _ttt_attention(q, k, v, cache: TTTCache, layer: int, key_padding: torch.Tensor | None) -> torch.Tensor:
    """Step 0: causal over positions (stored as the base). Step k: base keys <= t, plus diagonals 1..k."""
    if cache.base[layer] is None:
        cache.base[layer] = (k, v)
        return _dense_attention(q, k, v, key_padding if key_padding is not None else cache.key_padding_mask)
    cache.diag[layer].append((k, v))
    rep = q.shape[1] // k.shape[1]
    k0, v0 = (_repeat_kv(x, rep) for x in cache.base[layer])
    scale = 1.0 / math.sqrt(q.shape[-1])
    s0 = (q @ k0.transpose(-1, -2)) * scale  # (B, nh, T, T)
    pad = key_padding if key_padding is not None else cache.key_padding_mask
    s0 = s0 + _causal_mask(q.shape[2], k0.shape[2], q.device, s0.dtype, pad)
    dk = torch.stack([_repeat_kv(kk, rep) for kk, _ in cache.diag[layer]], dim=-2)  # (B,nh,T,k,hd)
    dv = torch.stack([_repeat_kv(vv, rep) for _, vv in cache.diag[layer]], dim=-2)
    sd = (q.unsqueeze(-2) * dk).sum(-1) * scale  # (B, nh, T, k)
    p = torch.softmax(torch.cat([s0, sd], dim=-1).float(), dim=-1).to(q.dtype)
    t0 = k0.shape[2]
    return p[..., :t0] @ v0 + (p[..., t0:].unsqueeze(-1) * dv).sum(-2)


# ------------------------------------------------------------------------------------------ head
class DraftHead(nn.Module):
    """EAGLE-3 draft head.

    Buffers ``d2t`` (V_d,) long (draft id -> target id) and ``t2d`` (V,) long (target id -> draft id, -1 absent).
    """

    def __init__(self, hc: HeadConfig, embedding: torch.Tensor | None = None):
        super().__init__()
        self.hc = hc
        h = hc.hidden_size
        self.embed_tokens = nn.Embedding(hc.target_vocab_size, h)
        if embedding is not None:
            self.embed_tokens.weight.data.copy_(embedding)
        self.embed_tokens.weight.requires_grad_(False)
        # Mid/late-layer hidden states of small targets carry massive activations (SmolLM2-135M: RMS ~70,
        # outliers ~25k, vs RMS ~3 at layer 2): unnormalised, they dominate the fusion and its gradients.
        self.feature_norms = (
            nn.ModuleList([LlamaRMSNorm(h, eps=hc.rms_norm_eps) for _ in range(3)])
            if hc.feature_norm
            else None
        )
        self.fc = nn.Linear(3 * h, h, bias=False)
        self.layers = nn.ModuleList([DraftLayer(hc, first=i == 0) for i in range(hc.num_layers)])
        self.norm = LlamaRMSNorm(h, eps=hc.rms_norm_eps)
        self.lm_head = nn.Linear(h, hc.draft_vocab_size, bias=False)
        self.rotary = LlamaRotaryEmbedding(hc.rope_config())
        self.register_buffer("d2t", torch.arange(hc.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.full((hc.target_vocab_size,), -1, dtype=torch.long))

    # ---------------------------------------------------------------- vocab
    def set_vocab(self, d2t: torch.Tensor) -> None:
        """Install the draft vocab: ``d2t`` (V_d,) distinct target ids; t2d is derived."""
        d2t = torch.as_tensor(d2t, dtype=torch.long).flatten()
        if d2t.numel() != self.hc.draft_vocab_size:
            raise UserError(
                f"model.draft.vocab_size: head has {self.hc.draft_vocab_size} draft tokens, "
                f"vocab map has {d2t.numel()}"
            )
        if d2t.unique().numel() != d2t.numel() or d2t.min() < 0 or d2t.max() >= self.hc.target_vocab_size:
            raise UserError("draft vocab: d2t must hold distinct target ids in [0, target vocab)")
        self.d2t.copy_(d2t)
        self.t2d.fill_(-1)
        self.t2d[d2t] = torch.arange(d2t.numel(), dtype=torch.long, device=d2t.device)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ---------------------------------------------------------------- compute
    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, 3H) target features (any float dtype) -> (B, T, H) in the head's dtype."""
        x = features.to(self.fc.weight.dtype)
        if self.feature_norms is not None:
            x = torch.cat([n(b) for n, b in zip(self.feature_norms, x.chunk(3, dim=-1))], dim=-1)
        return self.fc(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) pre-norm hidden -> (B, T, V_d) draft-vocab logits."""
        return self.lm_head(self.norm(hidden))

    def step(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: TTTCache | KVCache | AnchorTreeCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One draft step.

        hidden (B, T, H): fused target features (step 0) or the head's previous hidden output;
        input_ids (B, T) target-vocab ids of the tokens that follow those hiddens;
        position_ids (B|1, T) rotary positions.
        cache: None (causal over the T positions), a :class:`TTTCache` (training-time test), a
        :class:`KVCache` (decoding; the new K/V are appended), or an :class:`AnchorTreeCache` (many anchors'
        trees at once; its ``limit``/``ancestors`` set by the caller).
        attn_mask: (B, T_keys) bool key padding, or an additive (B|1, 1, T, T_keys) mask (tree attention;
        KVCache only), or None (causal).
        Returns (hidden_out (B, T, H) pre-norm, logits (B, T, V_d)).
        """
        emb = self.embed_tokens(input_ids).to(hidden.dtype)
        rope = self.rotary(hidden, position_ids)
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, emb, rope, i, cache, attn_mask)
        return hidden, self.logits(hidden)

    def new_ttt_cache(self, key_padding_mask: torch.Tensor | None = None) -> TTTCache:
        return TTTCache(len(self.layers), key_padding_mask)

    def new_kv_cache(self) -> KVCache:
        return KVCache(len(self.layers))

    # ---------------------------------------------------------------- save / load
    def save(self, out_dir: str | Path) -> Path:
        """Write safetensors (trained weights, no embedding), the vocab maps, and config.json with the sha256
        of both weight files (checked by :meth:`load`)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().contiguous().cpu()
            for k, v in self.state_dict().items()
            if not k.startswith(("embed_tokens.", "d2t", "t2d"))
        }
        save_file(state, str(out / WEIGHTS_FILE))
        save_file({"d2t": self.d2t.cpu(), "t2d": self.t2d.cpu()}, str(out / VOCAB_FILE))
        meta = {"format": "vsd-eagle3-head", "version": 1, "head": asdict(self.hc)}
        meta["trainable_parameters"] = self.num_trainable_parameters()
        meta["sha256"] = {f: sha256_file(out / f) for f in CHECKED_FILES}
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
        return out

    @classmethod
    def load(cls, path: str | Path, target, device: str | torch.device = "cpu") -> DraftHead:
        """Rebuild a saved head; the frozen embedding is copied from ``target`` (checked for geometry).

        The weight files are checked against the sha256 in config.json first: a corrupt, truncated or
        unreadable file is a one-line :class:`UserError` naming it. A checkpoint saved before checksums
        (no ``sha256``) loads unchecked, with a warning once per directory.
        """
        p = Path(path)
        cfg_file = p / CONFIG_FILE
        if not cfg_file.exists() or not (p / WEIGHTS_FILE).exists() or not (p / VOCAB_FILE).exists():
            raise UserError(f"draft checkpoint {p}: missing {CONFIG_FILE}, {WEIGHTS_FILE} or {VOCAB_FILE}")
        try:
            meta = json.loads(cfg_file.read_text())
            hc = HeadConfig(**meta["head"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            why = " ".join(str(e).split())
            raise UserError(f"draft checkpoint {cfg_file}: unreadable config ({why}); {_RESTORE_HINT}") from e
        _check_files(p, meta.get("sha256"))
        if hc.hidden_size != target.hidden_size or hc.target_vocab_size != target.vocab_size:
            raise UserError(
                f"draft checkpoint {p}: built for a target with H={hc.hidden_size}, V={hc.target_vocab_size} "
                f"({hc.target_name}), but the target {target.name} has H={target.hidden_size}, "
                f"V={target.vocab_size}"
            )
        head = cls(hc, target.model.get_input_embeddings().weight.detach().float())
        state = _read_safetensors(p / WEIGHTS_FILE)
        missing, unexpected = head.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.startswith(("embed_tokens.", "d2t", "t2d"))]
        if missing or unexpected:
            raise UserError(
                f"draft checkpoint {p}: weights do not match (missing {missing}, extra {unexpected})"
            )
        head.set_vocab(_read_safetensors(p / VOCAB_FILE)["d2t"])
        return head.to(device)


# Files of a draft checkpoint whose sha256 config.json records.
CHECKED_FILES = (WEIGHTS_FILE, VOCAB_FILE)
_RESTORE_HINT = (
    "the file is corrupt or incomplete; download it again (or, for a draft shipped in the repository, "
    "`git checkout -- <file>`) to restore it"
)
_WARNED_UNCHECKED: set[str] = set()


def _check_files(ckpt: Path, recorded: dict[str, str] | None) -> None:
    """Compare each weight file with its recorded sha256; warn once per checkpoint saved without them."""
    if not recorded:
        if str(ckpt) not in _WARNED_UNCHECKED:
            _WARNED_UNCHECKED.add(str(ckpt))
            warnings.warn(
                f"draft checkpoint {ckpt}: config.json records no sha256 (saved before checksums); "
                "its weight files are loaded unchecked",
                stacklevel=3,
            )
        return
    for name in CHECKED_FILES:
        f = ckpt / name
        want = recorded.get(name)
        try:
            got = sha256_file(f)
        except OSError as e:
            raise UserError(f"draft checkpoint {f}: unreadable ({e.strerror or e}); {_RESTORE_HINT}") from e
        if want is None:
            raise UserError(f"draft checkpoint {ckpt / CONFIG_FILE}: no sha256 for {name}; {_RESTORE_HINT}")
        if got != want:
            raise UserError(
                f"draft checkpoint {f}: sha256 {got[:12]}... differs from {want[:12]}... recorded in "
                f"{CONFIG_FILE}; {_RESTORE_HINT}"
            )


def _read_safetensors(f: Path) -> dict[str, torch.Tensor]:
    """``load_file`` with a one-line error naming the file (a truncated file of an unchecked checkpoint)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(f))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types; all mean a bad file
        first = " ".join(str(e).split())[:200]
        raise UserError(
            f"draft checkpoint {f}: unreadable ({type(e).__name__}: {first}); {_RESTORE_HINT}"
        ) from e


def build_head(target, dcfg, d2t: torch.Tensor, seed: int | None = None) -> DraftHead:
    """A fresh head for ``target`` with draft vocab ``d2t`` (V_d,) and the target's embedding, frozen."""
    hc = HeadConfig.from_target(target, dcfg, draft_vocab_size=int(torch.as_tensor(d2t).numel()))
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    head = DraftHead(hc, target.model.get_input_embeddings().weight.detach().float())
    if seed is not None:
        torch.random.set_rng_state(gen_state)
    head.set_vocab(d2t)
    return head.to(target.device)


SHIPPED = "shipped"
DRAFTS_DIR = Path(__file__).resolve().parents[1] / "drafts"  # drafts shipped with vsd (package data)


def resolve_draft_dir(value: str, model_cfg, key: str) -> Path:
    """A draft directory from a config value: ``shipped`` is the model's shipped base draft
    (``model.draft.base`` under vsd/drafts/), anything else a path. ``key`` names the config key in errors."""
    if value != SHIPPED:
        return Path(value).expanduser()
    base = model_cfg.draft.base
    if not base:
        raise UserError(f"{key}: model {model_cfg.name} ships no base draft (model.draft.base is unset)")
    d = DRAFTS_DIR / base
    if not d.is_dir():
        raise UserError(
            f"{key}: the shipped draft {d} is missing (restore it: git checkout -- vsd/drafts/{base})"
        )
    return d
