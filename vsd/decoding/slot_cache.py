"""A static-shape KV cache for captured (CUDA-graph) decoding steps.

HF's StaticCache keeps an internal per-layer length counter and ignores ``cache_position`` (transformers
5.17-5.24), so a replayed graph would append further along every time. This cache has no hidden state: every
forward writes its N new key/value rows at the slots held in a caller-owned index tensor, and visibility is
entirely the caller's 4D mask. The model code is the stock HF one (it calls ``cache.update``).

Layout: one K and one V tensor for all layers, (L, B, kv_heads, max_len, head_dim), so compaction after a
speculative step is one index copy for all layers instead of one per layer.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _SlotLayer(CacheLayerMixin):
    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, owner: SlotCache):
        super().__init__()
        self.keys, self.values, self.owner = keys, values, owner
        self.device = keys.device
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write (B, kvh, N, hd) rows at ``owner.slots`` (N,) and return the full (B, kvh, max_len, hd) buffers."""
        self.keys.index_copy_(2, self.owner.slots, key_states.to(self.keys.dtype))
        self.values.index_copy_(2, self.owner.slots, value_states.to(self.values.dtype))
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[2], 0

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class SlotCache(Cache):
    """KV cache whose write positions (``slots``) and visibility (the 4D mask) are set by the caller.

    ``length`` is the number of committed rows (all at slots [0, length)); it is bookkeeping only, the
    model never reads it because positions and masks are always passed explicitly.
    """

    def __init__(self, config, max_len: int, device: torch.device | str, dtype: torch.dtype, batch: int = 1):
        n_layers = config.num_hidden_layers
        kvh = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (n_layers, batch, kvh, max_len, hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0
        self.slots = torch.zeros(0, dtype=torch.long, device=device)
        super().__init__(layers=[_SlotLayer(self.k[i], self.v[i], self) for i in range(n_layers)])

    def set_slots(self, slots: torch.Tensor) -> None:
        """Use ``slots`` (N,) long (on the cache's device) as the write positions of the next forward."""
        self.slots = slots
        for layer in self.layers:
            layer.owner = self

    def keep_rows(self, start: int | torch.Tensor, rows: list[int] | torch.Tensor) -> None:
        """Of the block written at ``start``, move ``rows`` (relative, increasing) to its front: one gather for
        all layers. ``start`` and ``rows`` may be device tensors ((1,) and (r,) long: the captured step, no host
        value); host rows already in place are not copied. The committed ``length`` is the caller's."""
        if not torch.is_tensor(rows):
            if rows == list(range(len(rows))):
                return
            rows = torch.tensor(rows, device=self.k.device)
        src = start + rows
        dst = start + torch.arange(rows.numel(), device=self.k.device)
        self.k.index_copy_(3, dst, self.k.index_select(3, src))
        self.v.index_copy_(3, dst, self.v.index_select(3, src))

    def keep(self, start: int, rows: list[int]) -> None:
        """:meth:`keep_rows`, then the committed length becomes ``start + len(rows)``."""
        self.keep_rows(start, rows)
        self.length = start + len(rows)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def reset(self) -> None:
        self.length = 0
