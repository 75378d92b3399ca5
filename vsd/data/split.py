"""The train / held-out split of the self-distilled sequences (shared by the vocab and the trainer)."""

from __future__ import annotations

import random


def heldout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices), both sorted; deterministic in ``seed``.

    At least one held-out sequence when ``fraction > 0`` and n > 1, and never all of them.
    """
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    k = min(n - 1, max(1, round(n * fraction)))
    order = list(range(n))
    random.Random(seed + 7919).shuffle(order)  # offset: not the same stream as the prompt shuffle
    held = sorted(order[:k])
    hs = set(held)
    return [i for i in range(n) if i not in hs], held
