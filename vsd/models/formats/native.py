"""vsd's own layout (``"format": "vsd-eagle3-head"``, written by :meth:`DraftHead.save`), read without a
target for export: the weights under DraftHead names, the absolute-id vocab map, the geometry."""

from __future__ import annotations

import json
from pathlib import Path

from vsd.errors import UserError
from vsd.models.draft import (
    CHECKED_FILES,
    CONFIG_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    HeadConfig,
    _check_files,
    _read_safetensors,
)
from vsd.models.formats.common import DraftCheckpoint

FORMAT = "vsd-eagle3-head"
FIELDS = {
    "hidden_size": "head.hidden_size",
    "vocab_size": "head.target_vocab_size",
    "feature_layers": "head.feature_layers",
}


def is_native(cfg: dict) -> bool:
    return cfg.get("format") == FORMAT


def read(d: Path, cfg: dict, where: str) -> DraftCheckpoint:
    """The checkpoint in ``d`` (its config.json already parsed as ``cfg``), sha256-checked like DraftHead.load."""
    for name in (WEIGHTS_FILE, VOCAB_FILE):
        if not (d / name).is_file():
            raise UserError(f"{where}: missing {name}")
    try:
        hc = HeadConfig(**cfg["head"])
    except (KeyError, TypeError) as e:
        raise UserError(f"{where}: {CONFIG_FILE} has no valid 'head' ({' '.join(str(e).split())})") from e
    _check_files(d, cfg.get("sha256"))
    state = _read_safetensors(d / WEIGHTS_FILE)
    vocab = _read_safetensors(d / VOCAB_FILE)
    if "d2t" not in vocab:
        raise UserError(f"{where}: {VOCAB_FILE} has no 'd2t'")
    return DraftCheckpoint(
        fmt="vsd",
        hc=hc,
        state=state,
        d2t=vocab["d2t"].long(),
        file_keys={k: k for k in state},
        fields=FIELDS,
        where=where,
        sha256=dict(cfg.get("sha256") or {}),
        meta={"files": list(CHECKED_FILES)},
    )


def load_config(d: Path, where: str) -> dict:
    try:
        cfg = json.loads((d / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: {CONFIG_FILE} is unreadable ({' '.join(str(e).split())[:200]})") from e
    if not isinstance(cfg, dict):
        raise UserError(f"{where}: {CONFIG_FILE} is not a JSON object")
    return cfg
