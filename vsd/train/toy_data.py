"""Training items computed online from a target, in the feature-cache item format (tests, smoke checks).

Item: {input_ids (T,) long, loss_mask (T,) bool, features (T, 3H), target_hidden (T, H)}; the same thing
vsd.features.dataset serves from its cache, so its ``collate`` batches them and vsd.data.vocab's
``token_counts`` / ``build_vocab`` give their draft vocab. Sequences are a random prompt plus the target's own
greedy continuation (self-distillation), so the draft has something learnable.
"""

from __future__ import annotations

import torch


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
