"""Features stage: build or reuse the target-feature cache of this run's self-distilled data.

Sets ``ctx.artifacts["features_dir"]`` (None with ``train.features=online``). Metrics: ``features/seconds``
(target compute in this run; 0 when reused), ``features/size_mb``, ``features/reused`` (1 if nothing was
computed), ``features/tokens``, ``features/tokens_per_s`` (when computed), ``features/online``.
"""

from __future__ import annotations

import time
from typing import Any

from vsd.errors import UserError
from vsd.features.cache import build_features


def run(ctx: Any) -> dict[str, float]:
    if ctx.cfg.train.features == "online":
        ctx.artifacts["features_dir"] = None
        return {"features/online": 1, "features/seconds": 0.0, "features/size_mb": 0.0, "features/reused": 0}
    if "dataset_dir" not in ctx.artifacts:
        raise UserError(
            "stages: the features stage needs the data stage before it (stages=[data,features,...])"
        )
    t0 = time.time()
    d, st = build_features(
        ctx.target,
        ctx.artifacts["dataset_dir"],
        ctx.cache_dir,
        batch_size=ctx.cfg.train.features_batch_size,
        dist_info=ctx.dist,
    )
    ctx.artifacts["features_dir"] = d
    ctx.record.update(
        features={"dir": str(d), **{k: st[k] for k in ("size_mb", "reused", "tokens", "shards")}}
    )
    out = {
        "features/online": 0,
        "features/seconds": round(st["seconds"] if not st["reused"] else time.time() - t0, 3),
        "features/size_mb": round(st["size_mb"], 2),
        "features/reused": st["reused"],
        "features/tokens": st["tokens"],
    }
    if st.get("tokens_per_s"):
        out["features/tokens_per_s"] = st["tokens_per_s"]
    return out
