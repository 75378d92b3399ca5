"""Draft checkpoints in and out of the EAGLE-3 ecosystem: one reader and one writer per format, beside the
draft head, which stays format-agnostic.

- ``vsd``: vsd's own layout (:meth:`DraftHead.save`; ``native.py``);
- ``eagle3``: the official EAGLE-3 layout (SafeAILab/EAGLE, SpecForge, SGLang; ``eagle3.py``);
- ``speculators``: the speculators eagle3 format (vLLM; ``speculators.py``).

``draft.checkpoint=DIR`` and ``train.init_from=DIR`` go through :func:`load_head`, which detects the format
from ``config.json``, checks the checkpoint against the configured target (hidden size, vocabulary, feature
layers), refuses a flag vsd does not implement or a missing/unknown key with one line naming it, and keeps
the checkpoint's vocab map as it is. ``python -m vsd.export`` writes the foreign formats (:func:`write`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vsd.errors import UserError
from vsd.models.draft import CONFIG_FILE, DraftHead
from vsd.models.formats import eagle3, native, speculators
from vsd.models.formats.common import DraftCheckpoint, build_head, new_dir

FORMATS = ("vsd", "eagle3", "speculators")
EXPORT_FORMATS = ("eagle3", "speculators")


def detect(d: Path, where: str) -> tuple[str, dict]:
    """(format, parsed config.json) of the checkpoint folder ``d``."""
    if not (d / CONFIG_FILE).is_file():
        raise UserError(f"{where}: no {CONFIG_FILE} (not a draft checkpoint folder)")
    cfg = native.load_config(d, where)
    if native.is_native(cfg):
        return "vsd", cfg
    if speculators.is_speculators(cfg):
        return "speculators", cfg
    if eagle3.is_eagle3(cfg):
        return "eagle3", cfg
    raise UserError(
        f'{where}: {CONFIG_FILE} is none of the draft formats vsd reads: a vsd draft ("format": '
        f'"{native.FORMAT}"), an EAGLE-3 draft (architectures: {list(eagle3.ARCHITECTURES)}) or a speculators '
        "draft (speculators_model_type)"
    )


def read_checkpoint(d: str | Path, target=None, key: str = "draft.checkpoint") -> DraftCheckpoint:
    """The checkpoint in ``d``, whatever its format. Foreign formats need ``target`` (a default feature-layer
    list depends on its depth); vsd's own does not (export reads it without a target)."""
    d = Path(d)
    where = f"{key}: {d}"
    fmt, cfg = detect(d, where)
    if fmt == "vsd":
        return native.read(d, cfg, where)
    if target is None:
        raise UserError(f"{where}: a {fmt} checkpoint is read against a target; export reads vsd drafts only")
    reader = eagle3.read if fmt == "eagle3" else speculators.read
    return reader(d, cfg, target, where)


def load_head(
    d: str | Path, target, device: str | torch.device = "cpu", key: str = "draft.checkpoint"
) -> tuple[DraftHead, DraftCheckpoint]:
    """A :class:`DraftHead` from a checkpoint of any format, checked against ``target``; with the checkpoint
    (its format, the sha256 of its files)."""
    ck = read_checkpoint(d, target, key)
    head = build_head(ck, target, device)
    if ck.fmt != "vsd":
        print(
            f"[vsd] {key}: read the {ck.fmt} checkpoint {d} (draft vocab {ck.hc.draft_vocab_size})",
            flush=True,
        )
    return head, ck


def identity(d: str | Path) -> str:
    """What names a draft's weights for cache and resume keys: a vsd draft's config.json (it records the
    sha256 of its weight files); for other formats config.json plus the sha256 of the weight file."""
    import json

    d = Path(d)
    text = (d / CONFIG_FILE).read_text() if (d / CONFIG_FILE).is_file() else ""
    try:
        cfg = json.loads(text) if text else {}
    except ValueError:
        return text
    if isinstance(cfg, dict) and native.is_native(cfg):
        return text
    from vsd.models.formats.common import SAFETENSORS, TORCH_BIN, sha256_of

    return text + json.dumps(sha256_of(d, (SAFETENSORS, TORCH_BIN)), sort_keys=True)


def write(ck: DraftCheckpoint, fmt: str, out: str | Path, readme: str, **kw) -> Path:
    """Write ``ck`` in ``fmt`` (eagle3 | speculators) to the new folder ``out`` (refused if it exists; filled
    under a temporary name, so a failed export leaves nothing), with ``readme`` as README.md."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--to: must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    out = Path(out)
    with new_dir(out) as tmp:
        if fmt == "eagle3":
            eagle3.write(ck, tmp)
        else:
            speculators.write(ck, tmp, **kw)
        (tmp / "README.md").write_text(readme)
    return out
