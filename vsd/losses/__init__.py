"""Draft-training losses. One signature: ``loss(head, batch, step) -> (scalar tensor, logs dict[str, float])``.

Log-key convention (the trainer relies on it): keys ``n_*`` and ``s_*`` are counters/sums, summed over
micro-batches and ranks; ``loss`` is the batch's objective (trainer-weighted by response tokens); every
other key is averaged, weighted by the micro-batch's response-token count ``n_resp``.

Optional, for losses with random streams (the trainer calls them when present): ``state_dict()`` /
``load_state_dict(st)`` (saved with the training checkpoint, so a resumed run draws what the straight run
draws) and ``heldout_mode()`` (a context manager: held-out evaluation draws from its own stream).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from vsd.config.schema import LossConfig


class Loss(Protocol):
    name: str
    ttt_steps: int
    step_decay: float

    def __call__(self, head, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict]: ...


def build_loss(
    lcfg: LossConfig, target, vocab: dict[str, torch.Tensor], seed: int = 0, rank: int = 0
) -> Loss:
    """``loss.name`` -> the loss object (:data:`LOSSES`). vocab: {"d2t": (V_d,) target ids, "t2d": (V,) draft
    ids or -1}. ``seed`` (the run's) and ``rank`` (DDP) seed a loss's own random streams (VSD's E-step)."""
    if lcfg.name not in LOSSES:
        raise ValueError(f"loss.name: unknown loss {lcfg.name!r}")
    return LOSSES[lcfg.name](lcfg, target, vocab, seed, rank)


def _eagle3(lcfg: LossConfig, target, vocab: dict[str, torch.Tensor], seed: int, rank: int) -> Loss:
    from vsd.losses.eagle3 import Eagle3Loss

    return Eagle3Loss(lcfg, target, vocab)


def _vsd(lcfg: LossConfig, target, vocab: dict[str, torch.Tensor], seed: int, rank: int) -> Loss:
    from vsd.losses.vsd import VSDLoss  # built on top of Eagle3Loss by the VSD module

    return VSDLoss(lcfg, target, vocab, seed=seed, rank=rank)


# loss.name -> builder (lcfg, target, vocab, seed, rank): a new loss is one module plus one entry (and its name in
# the schema's loss.name choices, the compose-time check; a test ties the two lists)
LOSSES: dict[str, Callable[..., Loss]] = {"eagle3": _eagle3, "vsd": _vsd}
