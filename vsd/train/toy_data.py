"""Training items computed online from a target, in the feature-cache item format (tests, smoke checks).

Item: {input_ids (T,) long, loss_mask (T,) bool, features (T, 3H), target_hidden (T, H)}; the same thing
vsd.features.dataset serves from its cache. Sequences are a random prompt plus the target's own greedy
continuation (self-distillation), so the draft has something learnable.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence


@torch.no_grad()
def target_item(target, ids: list[int], prompt_len: int) -> dict[str, torch.Tensor]:
    """One item for the token ids ``ids`` whose first ``prompt_len`` tokens are the prompt."""
    x = torch.tensor([ids], dtype=torch.long, device=target.device)
    out = target.model.model(input_ids=x, output_hidden_states=True, use_cache=False)
    feats = target.features_from_hidden(out.hidden_states)
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[prompt_len:] = True
    return {
        "input_ids": x[0].cpu(),
        "loss_mask": mask,
        "features": feats[0].cpu(),
        "target_hidden": out.last_hidden_state[0].cpu(),  # after the final norm: logits = lm_head(this)
    }


@torch.no_grad()
def make_toy_items(
    target, n: int, prompt_len: int = 8, new_tokens: int = 24, seed: int = 0, greedy: bool = True
) -> list[dict]:
    """``n`` items of varying length: random byte prompts (ids < 256) + ``new_tokens`` (minus 0..3) response
    tokens, the target's greedy continuation (``greedy``) or random bytes (faster; the soft labels still
    come from the target)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        m = new_tokens - int(torch.randint(0, 4, (), generator=g))
        if not greedy:
            ids = torch.randint(0, min(256, target.vocab_size), (prompt_len + m,), generator=g).tolist()
            items.append(target_item(target, ids, prompt_len))
            continue
        x = torch.randint(0, min(256, target.vocab_size), (1, prompt_len), generator=g).to(target.device)
        ids, cache, step_in = x[0].tolist(), target.new_cache(), x
        for _ in range(m):
            nxt = int(target.forward(step_in, cache=cache).logits[0, -1].argmax())
            ids.append(nxt)
            step_in = torch.tensor([[nxt]], device=target.device)
        items.append(target_item(target, ids, prompt_len))
    return items


def collate_items(items: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item; adds attention_mask (B, T) bool."""
    out = {k: pad_sequence([it[k] for it in items], batch_first=True) for k in items[0]}
    out["attention_mask"] = pad_sequence(
        [torch.ones(len(it["input_ids"]), dtype=torch.bool) for it in items], batch_first=True
    )
    out["loss_mask"] = out["loss_mask"].bool()
    return out


def token_counts(items: list[dict], vocab_size: int) -> torch.Tensor:
    """(V,) counts of response tokens: the basis of the draft vocab."""
    c = torch.zeros(vocab_size, dtype=torch.long)
    for it in items:
        c += torch.bincount(it["input_ids"][it["loss_mask"]], minlength=vocab_size)
    return c
