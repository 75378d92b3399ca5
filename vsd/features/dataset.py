"""The trainer's view of the data: train / held-out datasets of per-sequence feature dicts, and collation.

Contract (the draft trainer relies on exactly this):
- :func:`make_train_source` ``(ctx) -> (train, heldout)``: torch Datasets whose items are dicts
  ``input_ids`` (T,) long, ``loss_mask`` (T,) bool (True on response tokens), ``features`` (T, 3H) bf16,
  ``target_hidden`` (T, H) bf16, with T <= ``train.max_seq_len``. Split by ``dataset.heldout_fraction``
  (seed ``dataset.seed``; the same split the draft vocab was counted on). ``train.features=cache`` reads the
  feature cache (sha256-verified once, memory-mapped); ``online`` items hold ``input_ids`` and ``loss_mask``
  only, and their dataset's ``collate`` computes the features of the whole batch with one target forward.
- :func:`collate` ``(items) -> dict``: the same keys padded to the batch's longest T (zeros; loss_mask
  False) plus ``attention_mask`` (B, T) bool. Each dataset's ``.collate`` is the one to use with it
  (:func:`collate` for the cache, :class:`OnlineCollate` for online features).
- :func:`load_vocab` ``(path) -> {"d2t", "t2d"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vsd.data.selfdistill import load_sequences
from vsd.data.shards import ShardPool, read_manifest, verify_shard
from vsd.data.split import heldout_split
from vsd.data.vocab import load_vocab
from vsd.errors import UserError

__all__ = [
    "CachedFeatures",
    "FeatureDataset",
    "OnlineCollate",
    "OnlineFeatures",
    "collate",
    "load_vocab",
    "make_train_source",
]


class CachedFeatures:
    """A feature cache read through memory maps (vsd/data/shards.py ``MappedShard``): each item is copied out
    of its shard on access, so the resident memory stays at a few items however large the cache is. Every
    shard is sha256-checked against the manifest once, when the store opens (streamed)."""

    def __init__(self, features_dir: str | Path, verify: bool = True):
        d = Path(features_dir)
        man = read_manifest(d)
        if man is None:
            raise UserError(f"feature cache {d} is incomplete (no manifest); rerun the features stage")
        self.dir = d
        paths = [d / s["file"] for s in man["shards"]]
        for p, s in zip(paths, man["shards"]):
            if verify:
                verify_shard(p, s["sha256"])
        self.shards = ShardPool(paths)
        self.index: list[tuple[int, int, int]] = []  # sequence -> (shard, start, end)
        for k in range(len(paths)):
            off = self.shards[k].tensor("offsets").tolist()
            self.index += [(k, off[j], off[j + 1]) for j in range(len(off) - 1)]

    def __len__(self) -> int:
        return len(self.index)

    def get(self, i: int) -> dict[str, torch.Tensor]:
        k, a, b = self.index[i]
        sh = self.shards[k]
        return {
            "input_ids": sh.rows("input_ids", a, b).long(),
            "loss_mask": sh.rows("loss_mask", a, b).bool(),
            "features": sh.rows("features", a, b),
            "target_hidden": sh.rows("target_hidden", a, b),
        }


class OnlineFeatures:
    """The sequences without features (``train.features=online``): :class:`OnlineCollate` computes them per
    batch, so nothing is cached and nothing per item runs the target."""

    def __init__(self, target: Any, dataset_dir: str | Path):
        self.target = target
        self.seqs = load_sequences(Path(dataset_dir))

    def __len__(self) -> int:
        return len(self.seqs)

    def get(self, i: int) -> dict[str, torch.Tensor]:
        s = self.seqs[i]
        return {"input_ids": s["input_ids"], "loss_mask": s["loss_mask"]}


class OnlineCollate:
    """``collate`` for online features: pad the batch, then ONE right-padded target forward on the target's
    device gives every item's ``features`` (B, T, 3H) and ``target_hidden`` (B, T, H), in bf16 like the cache
    and left on the device (no host round trip). Padding is zero, as :func:`collate` pads cached features.

    Forward pre-hooks take the inputs of the three feature layers, and the decoder's output is the final
    (normed) hidden state: the other layers' hidden states are never kept, which is what lets a batch of an 8B
    target fit. Right padding leaves every real position's context as it is, so the values equal the cached
    ones up to the low-order bits of a different kernel shape (bf16 tolerance: tests/features/test_online.py).
    """

    def __init__(self, target: Any):
        self.target = target
        self.forwards = 0  # target forwards so far (one per batch)

    @torch.no_grad()
    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        t = self.target
        out = {k: v.to(t.device) for k, v in collate(items).items()}
        base = t.model.get_decoder() if hasattr(t.model, "get_decoder") else t.model.model
        taken: dict[int, torch.Tensor] = {}

        def keep(i: int):
            def hook(_module, args, kwargs):
                taken[i] = args[0] if args else kwargs["hidden_states"]

            return hook

        L = len(base.layers)
        hooks = [
            base.layers[i].register_forward_pre_hook(keep(i), with_kwargs=True)
            for i in sorted(set(t.feature_layers))
            if i < L
        ]
        try:
            res = base(
                input_ids=out["input_ids"],
                attention_mask=out["attention_mask"].long(),
                use_cache=False,
                output_hidden_states=False,
            )
        finally:
            for h in hooks:
                h.remove()
        self.forwards += 1
        last = res.last_hidden_state
        taken[L] = last  # feature layer L: the final (normed) hidden state, as in hidden_states[L]
        pad = out["attention_mask"].unsqueeze(-1)
        out["features"] = torch.cat([taken[i] for i in t.feature_layers], dim=-1).to(torch.bfloat16) * pad
        out["target_hidden"] = last.to(torch.bfloat16) * pad
        return out


class FeatureDataset(Dataset):
    """A subset (``indices``) of a feature store, truncated to ``max_len`` tokens; ``collate`` batches it."""

    def __init__(
        self,
        store: CachedFeatures | OnlineFeatures,
        indices: list[int],
        max_len: int,
        batcher: OnlineCollate | None = None,
    ):
        self.store, self.indices, self.max_len = store, list(indices), max_len
        self.collate = batcher if batcher is not None else collate

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.store.get(self.indices[i])
        return {k: v[: self.max_len] for k, v in item.items()}


def make_train_source(ctx: Any) -> tuple[FeatureDataset, FeatureDataset]:
    """(train, heldout) datasets for the draft trainer; see the module docstring for the item contract."""
    cfg = ctx.cfg
    if cfg.train.features == "online":
        if "dataset_dir" not in ctx.artifacts:
            raise UserError("stages: train with train.features=online needs the data stage before it")
        store: CachedFeatures | OnlineFeatures = OnlineFeatures(ctx.target, ctx.artifacts["dataset_dir"])
    else:
        if not ctx.artifacts.get("features_dir"):
            raise UserError(
                "stages: train needs the data and features stages before it (stages=[data,features,train,...])"
            )
        store = CachedFeatures(ctx.artifacts["features_dir"])
    train_idx, held_idx = heldout_split(len(store), cfg.dataset.heldout_fraction, cfg.dataset.seed)
    max_len = min(cfg.train.max_seq_len, cfg.dataset.max_seq_len)
    batcher = OnlineCollate(ctx.target) if isinstance(store, OnlineFeatures) else None
    train = FeatureDataset(store, train_idx, max_len, batcher)
    return train, FeatureDataset(store, held_idx, max_len, batcher)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad a list of items to the longest T: (B, T) / (B, T, ·) tensors + ``attention_mask`` (B, T) bool."""
    if not items:
        raise ValueError("collate: empty batch")
    T = max(len(it["input_ids"]) for it in items)
    B = len(items)
    out: dict[str, torch.Tensor] = {}
    for key, v in items[0].items():
        buf = torch.zeros((B, T, *v.shape[1:]), dtype=v.dtype, device=v.device)  # GPU items stay there
        for b, it in enumerate(items):
            buf[b, : len(it[key])] = it[key]
        out[key] = buf
    out["attention_mask"] = torch.zeros(B, T, dtype=torch.bool, device=items[0]["input_ids"].device)
    for b, it in enumerate(items):
        out["attention_mask"][b, : len(it["input_ids"])] = True
    return out
