"""Train/eval disjointness: a training prompt is dropped if it matches any evaluation prompt.

Two tests on normalised text (NFKC, lower case, punctuation -> spaces, whitespace collapsed): an exact match
of the whole text, and any shared word 13-gram (the contamination test of the GPT-3 / Llama papers), which
catches an eval prompt embedded in a longer training prompt and light edits of it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from vsd.data.eval_prompts import all_eval_prompt_texts, load_prompt_file

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    """Lower case, NFKC, non-word characters -> one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def _ngrams(words: list[str], n: int) -> Iterable[str]:
    return (" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


class EvalOverlapIndex:
    """Index of evaluation prompt texts; :meth:`match` says why a training text overlaps, or None."""

    def __init__(self, eval_texts: Iterable[str], ngram: int = 13):
        self.ngram = ngram
        self.exact: set[str] = set()
        self.grams: set[str] = set()
        self.num_texts = 0
        for t in eval_texts:
            norm = normalize(t)
            if not norm:
                continue
            self.num_texts += 1
            self.exact.add(norm)
            self.grams.update(_ngrams(norm.split(), ngram))

    def match(self, text: str) -> str | None:
        """``"exact"`` or ``"<n>-gram"`` when ``text`` overlaps an eval prompt, else None."""
        norm = normalize(text)
        if norm in self.exact:
            return "exact"
        if self.grams and any(g in self.grams for g in _ngrams(norm.split(), self.ngram)):
            return f"{self.ngram}-gram"
        return None


def load_eval_texts(user_eval_file: str | None = None) -> tuple[list[str], list[str]]:
    """Every evaluation prompt text (packaged sets, plus the run's own eval prompt file if it names one).

    Returns (texts, provenance); the caller records the provenance in the data card.
    """
    texts = sorted(t for t in all_eval_prompt_texts() if isinstance(t, str))
    prov = ["vsd.data.eval_prompts.all_eval_prompt_texts"]
    if user_eval_file:
        texts += [t for r in load_prompt_file(user_eval_file) for t in r["turns"]]
        prov.append(f"eval.prompts={user_eval_file}")
    return texts, prov
