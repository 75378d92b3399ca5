"""``decoding.drafter`` -> how the eval builds it: one entry per drafter, no if/elif on names.

A new drafter is one new module implementing :class:`vsd.decoding.drafter.Drafter` plus one entry here (and its
name in the schema's ``decoding.drafter`` choices, the compose-time check; a test ties the two lists).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import Drafter


@dataclass(frozen=True)
class DrafterEntry:
    build: Callable[[Any, DecodingConfig, Path | None], Drafter]  # (target, decoding config, draft dir)
    needs_draft: bool  # a trained draft dir: draft.checkpoint or this run's train stage


def _ngram(target, dcfg: DecodingConfig, draft_dir: Path | None) -> Drafter:
    from vsd.decoding.ngram import NgramDrafter

    return NgramDrafter(target.vocab_size)


def _eagle3(target, dcfg: DecodingConfig, draft_dir: Path | None) -> Drafter:
    from vsd.decoding.eagle import load_draft  # only this drafter needs the model code

    drafter = load_draft(draft_dir, target)
    if dcfg.ngram_branch > 0:  # prompt lookup's continuation as one more branch of each T=0 tree
        from vsd.decoding.lookup_branch import LookupBranchDrafter

        return LookupBranchDrafter(drafter, target.vocab_size)
    return drafter


DRAFTERS: dict[str, DrafterEntry] = {
    "eagle3": DrafterEntry(_eagle3, needs_draft=True),
    "ngram": DrafterEntry(_ngram, needs_draft=False),
}


def build_drafter(target, dcfg: DecodingConfig, draft_dir: Path | None) -> Drafter:
    """The ``decoding.drafter`` drafter for ``target`` (``draft_dir``: its trained draft, where it needs one)."""
    return DRAFTERS[dcfg.drafter].build(target, dcfg, draft_dir)
