"""Batched generation by the target (self-distillation of one turn for a batch of contexts)."""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def generate_batch(
    target: Any, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float
) -> list[list[int]]:
    """Responses for a batch of tokenised prompts: left padding, one ``generate`` call.

    Each response runs to and including the first EOS (or ``max_new_tokens`` tokens).
    """
    pad = target.tokenizer.pad_token_id
    eos = sorted(target.eos_token_ids)
    width = max(map(len, prompt_ids))
    inp = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    mask = torch.zeros_like(inp)
    for r, s in enumerate(prompt_ids):
        inp[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = 1
    kw: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False}
    )
    out = target.model.generate(
        input_ids=inp.to(target.device),
        attention_mask=mask.to(target.device),
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        eos_token_id=eos,
        **kw,
    )
    responses = []
    for row in out[:, width:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        responses.append(row[:cut])
    return responses
