"""The eval stage: prompts -> AR / speculative / peer runs (eval.jsonl) -> metrics and cost model.

Evaluate an existing draft without retraining: ``python run.py stages=[eval] draft.checkpoint=DIR``;
the training-free prompt-lookup drafter: ``python run.py stages=[eval] decoding=ngram``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vsd.data.eval_prompts import load_suite
from vsd.decoding.shape_measure import ShapeChoice, resolve_shape
from vsd.errors import UserError
from vsd.evaluation.costs import cost_metrics, measure_forward_costs
from vsd.evaluation.metrics import compute_metrics, shape_metrics
from vsd.evaluation.turns import TurnDecoder


def draft_path(ctx) -> Path | None:
    """The draft directory the eval decodes with: this run's train stage output (``ctx.artifacts["draft_dir"]``)
    or ``draft.checkpoint``; None for a drafter that needs no trained draft (the n-gram drafter)."""
    from vsd.decoding.registry import DRAFTERS

    cfg = ctx.cfg
    if not DRAFTERS[cfg.decoding.drafter].needs_draft:
        return None
    where = ctx.artifacts.get("draft_dir") or cfg.draft.checkpoint
    if not where:
        raise UserError(
            f"draft.checkpoint: decoding.drafter={cfg.decoding.drafter} needs a trained draft (run the train "
            "stage or set draft.checkpoint=DIR), or use decoding=ngram"
        )
    from vsd.models.draft import resolve_draft_dir

    path = (
        Path(where)
        if "draft_dir" in ctx.artifacts
        else resolve_draft_dir(where, cfg.model, "draft.checkpoint")
    )
    if not path.is_dir():
        raise UserError(f"draft.checkpoint: draft directory {where} does not exist")
    return path


KERNEL_CHOICE = "target_kernel.json"  # in the run dir: eval.target_kernel=auto's measured choice


def _earlier_kernel_choice(ctx, tries: list[int]) -> dict[str, Any] | None:
    """The kernel an earlier attempt of this run measured under ``eval.target_kernel=auto`` with the same
    thread counts to try, or None (not auto, no earlier attempt, or one that tried other thread counts)."""
    import json

    path = Path(ctx.run_dir) / KERNEL_CHOICE
    if ctx.cfg.eval.target_kernel != "auto" or ctx.target.device.type != "cpu" or not path.is_file():
        return None
    try:
        earlier = json.loads(path.read_text())
    except ValueError:
        return None  # not the JSON this stage writes (atomically): measure again
    ok = isinstance(earlier, dict) and earlier.get("tries") == tries and "threads" in earlier
    from vsd.models.cpu_kernels import LOSSLESS

    return earlier if ok and earlier.get("kernel") in LOSSLESS else None


def decode_target(ctx) -> Any:
    """The target every decoding method of this eval uses: ``ctx.target`` with the kernels
    ``eval.target_kernel`` picks for this machine (vsd/models/cpu_kernels.py), chosen once per run."""
    if ctx.cfg.eval.method == "reference":
        return ctx.target  # no timing: the dense target's greedy continuations
    if "decode_target" not in ctx.artifacts:
        from vsd.models.cpu_kernels import choose_kernel
        from vsd.runtime import usable_cpus

        cfg = ctx.cfg
        n = cfg.threads or usable_cpus()  # an explicit `threads` is kept; else fewer threads are tried too
        tries = [n] if cfg.threads else sorted({n, max(1, n // 2)}, reverse=True)
        earlier = _earlier_kernel_choice(ctx, tries)
        if earlier is not None:
            # A resumed attempt keeps the first attempt's measured choice: a fresh timing can flip between
            # near-equal kernels, which would change the eval key and decode every finished turn again.
            target, report = choose_kernel(ctx.target, earlier["kernel"], [earlier["threads"]])
            report.update(
                mode=cfg.eval.target_kernel, reused_from=KERNEL_CHOICE, timings=earlier.get("timings")
            )
        else:
            target, report = choose_kernel(ctx.target, cfg.eval.target_kernel, tries)
            if target.device.type == "cpu" and cfg.eval.target_kernel == "auto":
                from vsd.records import atomic_write_json

                atomic_write_json(Path(ctx.run_dir) / KERNEL_CHOICE, {**report, "tries": tries})
        ctx.record.update(target_kernel=report)
        if not report.get("lossless", True):
            print(
                f"[vsd] eval: WARNING: eval.target_kernel={report['kernel']} quantizes activations per call, so "
                "T=0 speculative output can differ from plain AR (eval/lossless_match); speeds only",
                flush=True,
            )
        print(
            f"[vsd] eval: target kernel {report['kernel']}, {report.get('threads', '-')} threads "
            f"(eval.target_kernel={cfg.eval.target_kernel})",
            flush=True,
        )
        ctx.artifacts["decode_target"] = target
    return ctx.artifacts["decode_target"]


def make_drafter(ctx) -> Any:
    """The configured drafter (:data:`vsd.decoding.registry.DRAFTERS`), with its trained draft where it needs
    one (:func:`draft_path`)."""
    from vsd.decoding.registry import build_drafter

    path = draft_path(ctx)  # first: a missing draft is a one-line error before any target is prepared
    return build_drafter(decode_target(ctx), ctx.cfg.decoding, path)


def eval_key(ctx, dcfg) -> str:
    """What a decoded eval row depends on: the eval and decoding settings (the resolved shape), the target, the
    device and the draft's files (its config.json records their sha256). Rows of an interrupted eval with the
    same key are reused when the run is resumed."""
    import dataclasses
    import hashlib
    import json

    from omegaconf import OmegaConf

    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return dataclasses.asdict(x)
        return OmegaConf.to_container(x) if OmegaConf.is_config(x) else x

    cfg = ctx.cfg
    path = draft_path(ctx)
    if path is not None:
        from vsd.models.formats import identity

        draft = identity(path)  # a vsd draft's config.json (with its files' sha256); others add the weights'
    else:
        draft = ""
    what = {
        "eval": plain(cfg.eval),
        "decoding": plain(dcfg),
        "model": plain(cfg.model),
        "dtype": cfg.dtype,
        "device": str(ctx.target.device),
        "target_kernel": decode_target(ctx).kernel,
        "draft": draft,
    }
    blob = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resumable_rows(out: Path, key: str) -> dict[tuple[str, int], dict[str, Any]]:
    """The rows of an earlier, interrupted attempt at this eval (same key), by (id, turn); ``out`` is rewritten
    to hold just those (a torn last line or rows of other settings go)."""
    import json

    from vsd.records import atomic_write_text

    if not out.is_file():
        return {}
    done = {}
    for line in out.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the line being written when the run was stopped
        if isinstance(row, dict) and row.get("eval_key") == key:
            done[(str(row["id"]), int(row["turn"]))] = row
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in done.values()))
    return done


def _run_reference(ctx, records: list[dict], drafter, choice: ShapeChoice) -> dict[str, float]:
    """``eval.method=reference``: T=0 acceptance from the target's cached greedy continuations (no timing)."""
    from vsd.evaluation.reference import build_references, reference_rows
    from vsd.records import append_jsonl

    cfg = ctx.cfg
    dcfg = choice.decoding(cfg.decoding)
    refs = build_references(decode_target(ctx), records, cfg.decoding, cfg.eval, ctx.cache_dir)
    rows = reference_rows(
        drafter.head_in(dcfg.draft_dtype), decode_target(ctx), refs, dcfg
    )  # decoding's draft dtype
    out = Path(ctx.run_dir) / "eval.jsonl"
    out.unlink(missing_ok=True)
    for row in rows:
        append_jsonl(out, row)
    metrics = {k: v for k, v in compute_metrics(rows).items() if v == v}  # no timing: drop the NaN rates
    metrics["eval/reference"] = 1.0
    metrics.update(shape_metrics(choice.report))
    if not any("skipped" not in r for r in rows):
        raise UserError(
            "eval: every prompt turn is too long for the context (see eval.jsonl's skipped reasons)"
        )
    ctx.record.update(
        eval_info={
            "suite": cfg.eval.suite,
            "split": cfg.eval.split,
            "method": "reference",
            "prompts": len(records),
            "turns": len(rows),
            "drafter": cfg.decoding.drafter,
            "draft_dir": str(ctx.artifacts.get("draft_dir") or cfg.draft.checkpoint or ""),
        },
        shape=choice.report,
    )
    ctx.tracker.log(metrics)
    ctx.tracker.artifact(out, "eval-rows", "eval")
    return metrics


def run(ctx) -> dict[str, float]:
    """Evaluate; writes ``eval.jsonl`` in the run dir and returns the ``eval/*`` metrics."""
    cfg = ctx.cfg
    records = load_suite(cfg.eval)
    if not records:
        raise UserError(f"eval.suite: {cfg.eval.suite} selected no prompts (check eval.categories)")
    target = decode_target(ctx)
    drafter = make_drafter(ctx)
    # decoding.shape=auto: the tree shape for this device and draft (the peers keep the configured settings)
    choice = resolve_shape(target, drafter, cfg.decoding, cfg.paths.cache_dir)
    if cfg.eval.method == "reference":
        return _run_reference(ctx, records, drafter, choice)
    dcfg = choice.decoding(cfg.decoding)
    out = Path(ctx.run_dir) / "eval.jsonl"
    key = eval_key(ctx, dcfg)
    done = resumable_rows(out, key)  # a resumed run keeps the turns an interrupted attempt finished
    if done:
        print(f"[vsd] eval: resuming: {len(done)} turns from an earlier attempt of this eval", flush=True)
    turns = TurnDecoder(target, drafter, cfg.decoding, cfg.eval, out, shape=choice, row_key=key)
    print(
        f"[vsd] eval: {len(records)} prompts ({cfg.eval.suite}, split={cfg.eval.split}), "
        f"drafter={cfg.decoding.drafter}, mode={cfg.decoding.mode}, T={cfg.decoding.temperature}",
        flush=True,
    )
    rows = turns.run(records, done=done)
    metrics = compute_metrics(
        rows
    )  # counts turns skipped as too long for the context (eval/skipped_too_long)
    decoded = [r for r in rows if "skipped" not in r]
    if len(decoded) < len(rows):
        print(
            f"[vsd] eval: {len(rows) - len(decoded)} of {len(rows)} turns skipped, too long for the context "
            "(reasons in eval.jsonl; rule in docs/eval.md)",
            flush=True,
        )
    answers = {}
    if cfg.eval.answers:  # Spec-Bench answer files from the same rows (vsd/evaluation/specbench.py)
        from vsd.evaluation.specbench import write_answers

        model_id = cfg.eval.model_id or f"{cfg.model.name}-vsd-{cfg.decoding.drafter}"
        answers = {
            k: str(v) for k, v in write_answers(ctx.run_dir, rows, records, model_id, target.decode).items()
        }
        print(
            f"[vsd] eval: Spec-Bench answers: {', '.join(answers.values()) or 'none (no decoded turn)'}",
            flush=True,
        )
    costs = measure_forward_costs(target, turns.first_fitting_prompt(records), dcfg)
    metrics.update(cost_metrics(costs, decoded, dcfg, metrics["eval/tau"]))
    metrics.update(shape_metrics(choice.report))
    ctx.record.update(
        eval_info={
            "suite": cfg.eval.suite,
            "split": cfg.eval.split,
            "prompts": len(records),
            "turns": len(decoded),
            "skipped_too_long": len(rows) - len(decoded),
            "resumed_turns": len(done),  # rows timed by an earlier process (speedup mixes two processes)
            "drafter": cfg.decoding.drafter,
            "draft_dir": str(ctx.artifacts.get("draft_dir") or cfg.draft.checkpoint or ""),
            "specbench_answers": answers,
        },
        shape=choice.report,
    )
    ctx.tracker.log(metrics)
    ctx.tracker.artifact(out, "eval-rows", "eval")
    return metrics
