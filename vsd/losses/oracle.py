"""The VSD oracle: the frozen target scores every sampled draft path of every anchor in ONE forward.

Layout of the forward for a batch of B sequences (one row per sequence):

    [ y_0 .. y_{Tp-1} | node_0 .. node_{N-1} ],   N = A * S * D nodes (anchor-major, then sample, then depth)

Each path is a chain hanging off its anchor: path token z_t of anchor a sits at position pos(a) + t and may
attend to the sequence up to and including the anchor, and to its own z_<t. The node block's mask comes
from :mod:`vsd.decoding.tree_attention` (the one tree-attention implementation); the oracle only narrows
each node's view of the sequence to its anchor's prefix, and puts a causal block for the sequence itself
in front. Tp = (last anchor + 1): sequence tokens after every anchor are never needed.

Target log-probs of z_t come from the hidden state that predicts it: the anchor's own position for t = 1,
node z_{t-1} otherwise. The LM head is applied in chunks (the target vocab can be large).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vsd.decoding.tree_attention import node_depths, tree_attention_mask


@dataclass
class OracleOutput:
    """Per path token, shapes (B, A, S, D) unless noted. All tensors carry no grad."""

    logp: torch.Tensor  # float32 log p_T(z_t | x, z_<t), T = verify temperature (1 when greedy)
    greedy: torch.Tensor  # long, target argmax at z_t's position (target-vocab id)
    accept_prob: torch.Tensor  # float32 a_t: greedy 1[z_t == argmax]; stochastic min(1, p_T / q)
    hidden: torch.Tensor  # (B, A, S, D, H) target final hidden state that predicts z_t (for CAR)


def chain_parents(num_paths: int, depth: int, device: torch.device | None = None) -> torch.Tensor:
    """Parents (num_paths * depth,) of ``num_paths`` independent chains of length ``depth`` off the prefix."""
    idx = torch.arange(num_paths * depth, device=device)
    return torch.where(idx % depth == 0, torch.full_like(idx, -1), idx - 1)


def oracle_mask_and_positions(
    attention_mask: torch.Tensor, anchors: torch.Tensor, num_samples: int, depth: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive 4D mask (B, 1, Tp+N, Tp+N) and position ids (B, Tp+N) for the sequence + path forward.

    attention_mask: (B, Tp) 1 on real tokens; anchors: (B, A) long positions (< Tp).
    """
    B, Tp = attention_mask.shape
    A = anchors.shape[1]
    dev = attention_mask.device
    N = A * num_samples * depth
    parents = chain_parents(A * num_samples, depth, dev)
    neg = torch.finfo(dtype).min
    seq_ok = attention_mask.to(torch.bool)

    # node rows: the shared tree mask (every node sees the prefix and its own ancestors) ...
    node = tree_attention_mask(parents, Tp, dtype).expand(B, 1, N, Tp + N).clone()
    # ... narrowed to the node's anchor prefix y_<=anchor (and to real tokens).
    node_anchor = anchors.repeat_interleave(num_samples * depth, dim=1)  # (B, N)
    j = torch.arange(Tp, device=dev)
    hide = (j[None, None, :] > node_anchor[:, :, None]) | ~seq_ok[:, None, :]  # (B, N, Tp)
    node[:, 0, :, :Tp].masked_fill_(hide, neg)

    # sequence rows: causal over real tokens, blind to every node; the diagonal stays open so that no row
    # (e.g. a padding query) is fully masked.
    causal = j[None, :] <= j[:, None]
    allowed = causal[None] & seq_ok[:, None, :]
    allowed |= torch.eye(Tp, dtype=torch.bool, device=dev)[None]
    seq = torch.full((B, 1, Tp, Tp + N), neg, dtype=dtype, device=dev)
    seq[:, 0, :, :Tp].masked_fill_(allowed, 0.0)
    mask = torch.cat([seq, node], dim=2)

    seq_pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)  # (B, Tp); robust to left padding
    anchor_pos = seq_pos.gather(1, node_anchor)  # (B, N)
    node_pos = anchor_pos + node_depths(parents)[None]  # z_t at anchor + t
    return mask, torch.cat([seq_pos, node_pos], dim=1)


@torch.no_grad()
def oracle_hidden(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    anchors: torch.Tensor,
    paths: torch.Tensor,
) -> torch.Tensor:
    """Final hidden states (B, A, S, D, H) that predict each path token, from one target forward.

    model: a HF causal LM (``model.model`` the decoder stack); input_ids/attention_mask: (B, T);
    anchors: (B, A) long; paths: (B, A, S, D) long target-vocab ids.
    """
    B, A, S, D = paths.shape
    Tp = int(anchors.max()) + 1
    dtype = next(model.parameters()).dtype
    mask, pos = oracle_mask_and_positions(attention_mask[:, :Tp], anchors, S, D, dtype)
    ids = torch.cat([input_ids[:, :Tp], paths.reshape(B, -1)], dim=1)
    out = model.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    h = out.last_hidden_state  # (B, Tp + N, H)
    H = h.shape[-1]
    h_anchor = h.gather(1, anchors[..., None].expand(B, A, H))  # (B, A, H): predicts z_1
    h_nodes = h[:, Tp:].reshape(B, A, S, D, H)
    first = h_anchor[:, :, None, None, :].expand(B, A, S, 1, H)
    return torch.cat([first, h_nodes[:, :, :, : D - 1]], dim=3)


@torch.no_grad()
def score_paths(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    paths: torch.Tensor,
    temperature: float,
    chunk: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p_T of each path token and the target argmax, applying the LM head in chunks of positions.

    hidden: (..., H); paths: (...) long. T = ``temperature`` (use 1 for the greedy oracle). Returns
    (logp float32 (...), greedy long (...)).
    """
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_z = paths.reshape(-1)
    logp = torch.empty(flat_z.shape, dtype=torch.float32, device=hidden.device)
    greedy = torch.empty(flat_z.shape, dtype=torch.long, device=hidden.device)
    for i in range(0, flat_z.numel(), chunk):
        logits = lm_head(flat_h[i : i + chunk]).float()
        greedy[i : i + chunk] = logits.argmax(-1)
        lp = F.log_softmax(logits / temperature, dim=-1)
        logp[i : i + chunk] = lp.gather(-1, flat_z[i : i + chunk, None])[:, 0]
    return logp.reshape(paths.shape), greedy.reshape(paths.shape)


@torch.no_grad()
def run_oracle(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    anchors: torch.Tensor,
    paths: torch.Tensor,
    *,
    verify_temperature: float,
    proposal_logq: torch.Tensor | None = None,
) -> OracleOutput:
    """Score sampled paths with the target and compute per-token acceptance.

    input_ids, attention_mask: (B, T); anchors: (B, A) long, the last prefix position of each anchor;
    paths: (B, A, S, D) target-vocab ids. Greedy verification (verify_temperature == 0): a_t =
    1[z_t == argmax p]. Stochastic (T > 0): a_t = min(1, p_T(z_t) / q(z_t)) with q the proposal that drew
    z (``proposal_logq`` (B, A, S, D), required then).
    """
    hidden = oracle_hidden(model, input_ids, attention_mask, anchors, paths)
    T = verify_temperature if verify_temperature > 0 else 1.0
    logp, greedy = score_paths(model.lm_head, hidden, paths, T)
    if verify_temperature > 0:
        if proposal_logq is None:
            raise ValueError("stochastic verification needs the proposal log-probs (proposal_logq)")
        accept = (logp - proposal_logq.float()).clamp_max(0.0).exp()
    else:
        accept = (paths == greedy).float()
    return OracleOutput(logp=logp, greedy=greedy, accept_prob=accept, hidden=hidden)


def target_logits_on(lm_head: torch.nn.Module, hidden: torch.Tensor, vocab_ids: torch.Tensor) -> torch.Tensor:
    """Target logits restricted to ``vocab_ids`` (the draft vocab's target ids): (..., H) -> (..., |ids|)."""
    w = lm_head.weight[vocab_ids]
    b = lm_head.bias[vocab_ids] if getattr(lm_head, "bias", None) is not None else None
    return F.linear(hidden, w, b)


@torch.no_grad()
def tree_oracle(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    anchors: torch.Tensor,
    tokens: torch.Tensor,
    ancestors: torch.Tensor,
    depths: torch.Tensor,
    parents: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy oracle over one draft TREE per anchor (``loss.estep=tree``), in one target forward.

    tokens (B, A, N) target-vocab ids; ancestors (B, A, N, N) bool (node i sees node j of its own tree);
    depths/parents (B, A, N) (parents index the same tree, -1 = child of the anchor). Every node sees the
    sequence up to and including its anchor, its own tree ancestors and itself, at position anchor + depth.
    Returns (greedy (B, A, N) long: the target's argmax where the node's token is predicted, hidden (B, A, N, H):
    the final hidden state that predicts it, for CAR).
    """
    B, A, N = tokens.shape
    Tp = int(anchors.max()) + 1
    dev = input_ids.device
    dtype = next(model.parameters()).dtype
    neg = torch.finfo(dtype).min
    am = attention_mask[:, :Tp].to(torch.bool)
    j = torch.arange(Tp, device=dev)
    seq_allowed = (j[None, :] <= j[:, None])[None] & am[:, None, :]
    seq_allowed |= torch.eye(Tp, dtype=torch.bool, device=dev)[None]
    node_anchor = anchors.repeat_interleave(N, dim=1)  # (B, A*N)
    pre = (j[None, None, :] <= node_anchor[:, :, None]) & am[:, None, :]  # (B, A*N, Tp)
    blocks = torch.zeros(B, A, N, A, N, dtype=torch.bool, device=dev)
    idx = torch.arange(A, device=dev)
    blocks[:, idx, :, idx, :] = ancestors.transpose(0, 1)  # block diagonal: a tree sees only itself
    allowed = torch.cat(
        [
            torch.cat([seq_allowed, torch.zeros(B, Tp, A * N, dtype=torch.bool, device=dev)], dim=2),
            torch.cat([pre, blocks.view(B, A * N, A * N)], dim=2),
        ],
        dim=1,
    )
    mask = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill(~allowed, neg)[:, None]
    seq_pos = (attention_mask[:, :Tp].long().cumsum(-1) - 1).clamp_min(0)
    node_pos = seq_pos.gather(1, node_anchor) + depths.reshape(B, A * N)
    ids = torch.cat([input_ids[:, :Tp], tokens.reshape(B, A * N)], dim=1)
    out = model.model(
        input_ids=ids, attention_mask=mask, position_ids=torch.cat([seq_pos, node_pos], 1), use_cache=False
    )
    h = out.last_hidden_state
    H = h.shape[-1]
    h_anchor = h.gather(1, anchors[..., None].expand(B, A, H))  # predicts depth-1 nodes
    h_nodes = h[:, Tp:].reshape(B, A, N, H)
    par_h = h_nodes.gather(2, parents.clamp(min=0)[..., None].expand(B, A, N, H))
    pred = torch.where((parents >= 0)[..., None], par_h, h_anchor[:, :, None, :])
    greedy = torch.empty(B, A, N, dtype=torch.long, device=dev)
    flat = pred.reshape(-1, H)
    for i in range(0, flat.shape[0], 512):
        greedy.view(-1)[i : i + 512] = model.lm_head(flat[i : i + 512]).argmax(-1)
    return greedy, pred
