"""Export a vsd draft to the official EAGLE-3 layout (SGLang, the EAGLE code) or the speculators format (vLLM).

    python -m vsd.export SRC --to eagle3|speculators --out DIR [--model NAME] [--verifier ID_OR_DIR]

SRC is a run's ``draft/`` folder, a run folder (its ``draft/`` is used), any vsd checkpoint folder, or
``shipped`` (the shipped base draft of ``--model``, default: the default config's target). The export holds
exactly the keys and config fields those loaders read plus a README of how the draft was trained; an existing
``--out`` is refused, and a failed export leaves nothing behind. Formats: vsd/models/formats, docs/ecosystem.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from vsd.errors import UserError

# Targets loaded from a GGUF name no hub model in their config: the hub model the GGUF was made from.
HUB_NAMES = {"smollm2_135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
# The verifier architecture vLLM/speculators record, by vsd target name (else --verifier-arch or the local
# verifier folder's config.json).
ARCHITECTURES = {
    "smollm2_135m": "LlamaForCausalLM",
    "llama31_8b": "LlamaForCausalLM",
    "vicuna_13b": "LlamaForCausalLM",
    "qwen3_8b": "Qwen3ForCausalLM",
    "tiny_random": "LlamaForCausalLM",
}
SPECULATIVE_TOKENS = 5  # vsd's decoding.depth default: the draft length vLLM proposes unless told otherwise


def _model_config(name: str | None):
    """The composed ``model`` config group for ``name`` (None: the default config's), or None if no such
    group exists (a draft trained for a target vsd has no config for)."""
    from vsd.config import compose

    conf = Path(__file__).resolve().parents[1] / "conf" / "model"
    if name is not None and not (conf / f"{name}.yaml").is_file():
        return None
    return compose([f"model={name}"] if name else [])[0][1].model


def resolve_source(src: str, model: str | None) -> tuple[Path, Any]:
    """(checkpoint folder, model config or None) for SRC."""
    from vsd.models.draft import CONFIG_FILE, resolve_draft_dir

    if src == "shipped":
        mcfg = _model_config(model)
        return resolve_draft_dir(src, mcfg, "SRC"), mcfg
    p = Path(src).expanduser()
    if not p.is_dir():
        raise UserError(f"SRC: {p} is not a folder (a run's draft/, a draft checkpoint folder, or shipped)")
    if (p / "draft" / CONFIG_FILE).is_file():
        p = p / "draft"  # a run folder (its own config.json is the run's resolved config)
    return p, None


def verifier_for(target_name: str, mcfg, verifier: str | None, arch: str | None) -> tuple[str, str]:
    """(verifier name or folder, its architecture) for the speculators config."""
    name = verifier or (mcfg.hf_id if mcfg is not None and mcfg.hf_id else None) or HUB_NAMES.get(target_name)
    if not name:
        raise UserError(
            f"--verifier: no hub id is known for the target {target_name!r}; pass --verifier ID_OR_DIR"
        )
    if arch is None:
        cfg_file = Path(name).expanduser() / "config.json"
        if cfg_file.is_file():
            archs = json.loads(cfg_file.read_text()).get("architectures") or []
            arch = archs[0] if archs else None
        arch = arch or ARCHITECTURES.get(target_name)
    if not arch:
        raise UserError(
            f"--verifier-arch: unknown for the target {target_name!r}; pass it (e.g. LlamaForCausalLM)"
        )
    return name, arch


def _run_record(ckpt: Path) -> dict[str, Any]:
    """The run folder's record next to a run's ``draft/``: resolved config, run.json, metrics (what exists)."""
    out: dict[str, Any] = {}
    run = ckpt.parent
    for name in ("config.json", "run.json", "metrics.json"):
        f = run / name
        if ckpt.name == "draft" and f.is_file():
            try:
                out[name] = json.loads(f.read_text())
            except ValueError:
                pass
    return out


def readme(src: str, ckpt: Path, fmt: str, ck, extra: dict[str, Any]) -> str:
    """A short README: what the draft is, how it was trained (from the run record when there is one), how to
    serve it."""
    from vsd.records import git_info

    hc = ck.hc
    rec = _run_record(ckpt)
    g = git_info()
    lines = [
        f"# A vsd draft for {hc.target_name}, in the {fmt} layout",
        "",
        f"Exported by `python -m vsd.export {src} --to {fmt}` on {dt.date.today().isoformat()} "
        f"(vsd {(g.get('git_sha') or 'unknown')[:12]}{' dirty' if g.get('git_dirty') else ''}) from `{ckpt}`.",
        "",
        f"- **Draft:** EAGLE-3 head, {hc.num_layers} decoder layer(s), hidden size {hc.hidden_size}, draft "
        f"vocabulary {hc.draft_vocab_size} of {hc.target_vocab_size} target tokens (`d2t`/`t2d`), features: the "
        f"hidden states entering target layers {list(hc.feature_layers)}"
        + (", each RMS-normalised before `fc` (`fc_norm`, EAGLE-3.1)." if hc.feature_norm else "."),
        f"- **Weights:** {ck.meta.get('n_params', 0):,} parameters, {extra['dtype']}; no token embedding "
        "(loaders take the target's).",
    ]
    if "verifier" in extra:
        lines.append(f"- **Verifier:** `{extra['verifier']}` ({extra['verifier_arch']}).")
    cfg = rec.get("config.json")
    if cfg:
        tr, loss = cfg.get("train", {}), cfg.get("loss", {})
        ds = cfg.get("dataset", {})
        lines.append(
            f"- **Trained by vsd:** loss `{loss.get('name')}`, {tr.get('steps')} steps x {tr.get('batch_size')} "
            f"sequences, lr {tr.get('lr')}, warm start `{tr.get('init_from')}`, data `{ds.get('name')}` "
            f"({ds.get('num_prompts')} prompts), seed {cfg.get('seed')}, run `{cfg.get('run_name')}`."
        )
        run = rec.get("run.json", {})
        if run:
            lines.append(f"- **Run record:** status {run.get('status')}, git {str(run.get('git_sha'))[:12]}.")
        m = rec.get("metrics.json", {})
        if "eval/tau" in m:
            sp = m.get("eval/speedup")
            lines.append(
                f"- **Eval in that run:** tau {m['eval/tau']:.2f}"
                + (f", speedup {sp:.2f}x over AR on the same machine" if isinstance(sp, (int, float)) else "")
                + "."
            )
    elif src == "shipped" or (ckpt / "README.md").is_file():
        lines.append(f"- **Training:** see `{ckpt / 'README.md'}` (the source's own README).")
    else:
        lines.append("- **Training:** no run record next to the source (not a run's `draft/` folder).")
    lines += ["", "## Serve it", "", "```bash"]
    target = extra.get("verifier") or extra.get("verifier_hint") or "<target model>"
    if fmt == "speculators":
        lines += [
            "vllm serve <this folder>   # the config names the verifier",
            f"vllm serve {target} \\",
            f'  --speculative-config \'{{"model": "<this folder>", "num_speculative_tokens": '
            f'{extra.get("speculative_tokens", SPECULATIVE_TOKENS)}, "method": "eagle3"}}\'',
        ]
    else:
        lines += [
            f"python3 -m sglang.launch_server --model {target} \\",
            "  --speculative-algorithm EAGLE3 --speculative-draft-model-path <this folder> \\",
            "  --speculative-num-steps 5 --speculative-eagle-topk 8 --speculative-num-draft-tokens 32",
        ]
    lines += ["```", ""]
    if hc.feature_norm:
        lines += [
            "`fc_norm` is on: the loader must implement EAGLE-3.1's per-feature norms (`fc_norm.{0,1,2}`). A "
            "loader without them skips those keys and serves a different draft; see vsd's docs/ecosystem.md.",
            "",
        ]
    return "\n".join(lines)


def export(
    src: str,
    fmt: str,
    out: str | Path,
    model: str | None = None,
    verifier: str | None = None,
    verifier_arch: str | None = None,
    speculative_tokens: int = SPECULATIVE_TOKENS,
) -> Path:
    from vsd.models.formats import EXPORT_FORMATS, read_checkpoint, write

    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--to: must be one of {list(EXPORT_FORMATS)}, got {fmt!r}")
    if speculative_tokens < 1:
        raise UserError(f"--speculative-tokens: must be >= 1, got {speculative_tokens}")
    if Path(out).exists():
        raise UserError(f"--out: {out} exists; choose a new directory (an export never overwrites)")
    ckpt, mcfg = resolve_source(src, model)
    ck = read_checkpoint(ckpt, key="SRC")
    if ck.fmt != "vsd":
        raise UserError(f"SRC: {ckpt} is already a {ck.fmt} checkpoint; export reads vsd drafts")
    ck.meta["n_params"] = sum(t.numel() for t in ck.state.values())
    extra: dict[str, Any] = {"dtype": str(ck.state["fc.weight"].dtype).removeprefix("torch.")}
    kw: dict[str, Any] = {}
    if mcfg is None:
        mcfg = _model_config(ck.hc.target_name)
    if fmt == "eagle3":
        try:  # only to name the target in the README's serving command
            extra["verifier_hint"] = verifier_for(ck.hc.target_name, mcfg, verifier, verifier_arch)[0]
        except UserError:
            pass
    if fmt == "speculators":
        name, arch = verifier_for(ck.hc.target_name, mcfg, verifier, verifier_arch)
        kw = {"verifier": name, "verifier_arch": arch, "speculative_tokens": speculative_tokens}
        extra.update(verifier=name, verifier_arch=arch, speculative_tokens=speculative_tokens)
    return write(ck, fmt, out, readme(src, ckpt, fmt, ck, extra), **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vsd.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="a run's draft/ folder, a run folder, a vsd checkpoint folder, or 'shipped'")
    ap.add_argument("--to", required=True, choices=["eagle3", "speculators"], help="the layout to write")
    ap.add_argument("--out", required=True, help="a new folder")
    ap.add_argument(
        "--model", default=None, help="model config for SRC=shipped (default: the default target)"
    )
    ap.add_argument("--verifier", default=None, help="speculators: the target's hub id or local folder")
    ap.add_argument("--verifier-arch", default=None, help="speculators: the target's architecture")
    ap.add_argument(
        "--speculative-tokens", type=int, default=SPECULATIVE_TOKENS, help="speculators: draft length"
    )
    args = ap.parse_args(argv)
    try:
        out = export(
            args.src,
            args.to,
            args.out,
            args.model,
            args.verifier,
            args.verifier_arch,
            args.speculative_tokens,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[vsd] exported {args.src} as {args.to} to {out} (README.md says how it was trained and served)")
    if args.to == "eagle3" and json.loads((out / "config.json").read_text()).get("fc_norm"):
        print(
            "[vsd] note: fc_norm is on: serve it with a loader that implements EAGLE-3.1's fc_norm (docs/ecosystem.md)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
