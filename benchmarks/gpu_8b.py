"""The large-target path on one GPU: an 8B architecture with random weights (``model.random_init=true``).

    python benchmarks/gpu_8b.py --model llama31_8b --out gpu_8b_llama.json     # one GPU (H100/H200)
    python benchmarks/gpu_8b.py --model qwen3_8b --out gpu_8b_qwen3.json
    python benchmarks/gpu_8b.py --model llama31_8b --tiny --out /tmp/smoke.json   # CPU smoke test (~1 min)

The target is the architecture of conf/model/<model>.yaml built from its config fields with random weights (no
weights, no hub, vsd/models/architecture.py): its costs are those of the real model, its outputs are not, so
no τ measured here means anything. Data are random token sequences of ``--seq`` tokens (the first quarter a
"prompt"). Measured, in one process:

- **features, cached**: ``build_features`` (target forwards, bf16 rows written to disk) at each
  ``--feature-batches`` size, tokens/s; then the memory-mapped store's read rate;
- **features, online**: ``OnlineCollate`` (one batched target forward per training batch), tokens/s and peak GPU
  memory at each ``--train-batches`` size;
- **draft training**: step time, tokens/s and peak GPU memory of the EAGLE-3 head (``loss=eagle3``, TTT 7) at
  each ``--train-batches`` size that fits, on cached and on online features (an OOM ends that series);
- **decoding**: graphed AR ms/token, and for each ``--trees`` shape the captured speculative step's draft and
  verify ms per step (engine timers) and, on CUDA, the GPU time of its two graphs; with these, the speedup each
  shape would give at the τ a published EAGLE-3 draft reaches on that target (``--tau``; defaults and sources
  in PUBLISHED_TAU): τ × AR ms/token / (draft + verify ms per step), and the GPU-time ceiling
  τ × t(target 1 row) / (t(step draft) + t(step verify)).

Prints a Markdown table and writes everything (with the card, versions and this command) as JSON to ``--out``.
``--tiny`` shrinks the architecture (4 layers, hidden 64) and the sizes and runs on the CPU with the static
(eager) capture path: a check that the script works, not a measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

# τ of published EAGLE-3 drafts at T=0 on MT-Bench (the speedup column's assumption; override with --tau)
PUBLISHED_TAU = {
    "llama31_8b": (6.13, "EAGLE-3 paper (arXiv 2503.01840) Table 1, LLaMA-Instruct 3.1 8B, MT-bench, T=0"),
    "qwen3_8b": (
        1.97,
        "AngelSlim EAGLE-3 benchmarks (angelslim.readthedocs.io), Qwen3-8B, MT-bench accept length",
    ),
}
TINY = [
    "model.architecture.num_layers=4",
    "model.architecture.hidden_size=64",
    "model.architecture.intermediate_size=128",
    "model.architecture.num_heads=4",
    "model.architecture.num_kv_heads=2",
    "model.architecture.head_dim=16",
]


def _tree(text: str) -> tuple[int, int, int]:
    try:
        d, k, n = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DEPTH,TOP_K,NODES, e.g. 6,10,60") from None
    return d, k, n


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def synthetic_dataset(root: Path, vocab: int, n: int, seq: int) -> Path:
    """A self-distill cache dir (the format vsd.data.selfdistill writes) of ``n`` random sequences."""
    from vsd.data.shards import save_shard, shard_name, write_manifest

    d = root / "selfdistill" / f"bench-{n}x{seq}-v{vocab}"
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    per = 32
    shards = (n + per - 1) // per
    for b in range(shards):
        rows = list(range(b * per, min(n, (b + 1) * per)))
        save_shard(
            d / shard_name(b),
            {
                "input_ids": torch.randint(0, vocab, (len(rows) * seq,), generator=g, dtype=torch.int32),
                "offsets": torch.arange(0, (len(rows) + 1) * seq, seq, dtype=torch.long),
                "prompt_lens": torch.full((len(rows),), seq // 4, dtype=torch.int32),
                "prompt_index": torch.tensor(rows, dtype=torch.long),
            },
        )
    write_manifest(d, shards, {"key": {"bench": True}, "stats": {}})
    return d


def bench_features_cached(target, data: Path, cache: Path, batches: list[int]) -> tuple[list[dict], Path]:
    from vsd.features.cache import build_features

    rows, last = [], None
    for b in batches:
        reset_peak(target.device)
        d, st = build_features(target, data, cache, progress=False, batch_size=b)
        rows.append(
            {
                "batch": b,
                "tokens": st["tokens"],
                "tokens_per_s": st["tokens_per_s"],
                "size_mb": round(st["size_mb"], 1),
                "bytes_per_token": round(st["size_mb"] * 2**20 / st["tokens"], 1),
                "peak_mem_mb": peak_mb(target.device),
            }
        )
        print("features cached", json.dumps(rows[-1]), flush=True)
        if last is not None and last != d:
            shutil.rmtree(last, ignore_errors=True)  # keep one cache on disk: the last (largest batch)
        last = d
    assert last is not None
    return rows, last


def bench_cache_read(features_dir: Path) -> dict:
    from vsd.features.dataset import CachedFeatures

    t0 = time.perf_counter()
    store = CachedFeatures(features_dir)
    t_open = time.perf_counter() - t0
    t0, tokens = time.perf_counter(), 0
    for i in range(len(store)):
        tokens += len(store.get(i)["input_ids"])
    dt = time.perf_counter() - t0
    out = {"open_s_sha256": round(t_open, 3), "tokens": tokens, "read_tokens_per_s": tokens / dt}
    print("features read", json.dumps(out), flush=True)
    return out


def bench_online(target, online, seq_idx: list[int], batches: list[int], reps: int) -> list[dict]:
    from vsd.features.dataset import OnlineCollate

    rows = []
    batcher = OnlineCollate(target)
    for b in batches:
        items = [online.get(i) for i in seq_idx[:b]]
        try:
            reset_peak(target.device)
            batcher(items)  # warm-up
            sync(target.device)
            t0 = time.perf_counter()
            for _ in range(reps):
                out = batcher(items)
            sync(target.device)
            dt = (time.perf_counter() - t0) / reps
            tokens = int(out["attention_mask"].sum())
            rows.append(
                {
                    "batch": b,
                    "ms": 1000 * dt,
                    "tokens_per_s": tokens / dt,
                    "peak_mem_mb": peak_mb(target.device),
                }
            )
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch": b, "oom": True})
            break
        finally:
            items = out = None  # noqa: F841 - free before the next size
            gc.collect()
        print("features online", json.dumps(rows[-1]), flush=True)
    return rows


def bench_train(
    target, cfg, store, batcher, n_seqs: int, seq: int, batches: list[int], steps: int
) -> list[dict]:
    from vsd.data.vocab import build_vocab, token_counts
    from vsd.features.dataset import FeatureDataset
    from vsd.losses import build_loss
    from vsd.models.draft import build_head
    from vsd.train.trainer import Trainer

    seqs = [store.get(i) for i in range(min(8, n_seqs))]
    vocab = build_vocab(token_counts(seqs, target.vocab_size), cfg.model.draft.vocab_size)
    ds = FeatureDataset(store, list(range(n_seqs)), seq, batcher)
    rows = []
    for b in batches:
        head = tr = None
        try:
            reset_peak(target.device)
            head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0)
            tcfg = dataclasses.replace(cfg.train, steps=steps + 1, batch_size=b, grad_accum=1)
            tr = Trainer(tcfg, head, build_loss(cfg.loss, target, vocab), ds, None, ds.collate, seed=0,
                         device=str(target.device), ckpt_dir=None, run_dir=None, progress=False)  # fmt: skip
            tr.train_step()  # warm-up (allocator, kernels)
            sync(target.device)
            t0, tokens = time.perf_counter(), 0.0
            for _ in range(steps):
                tokens += tr.train_step()["tokens"]
            sync(target.device)
            dt = (time.perf_counter() - t0) / steps
            rows.append(
                {
                    "batch": b,
                    "step_ms": 1000 * dt,
                    "tokens_per_s": tokens / steps / dt,
                    "peak_mem_mb": peak_mb(target.device),
                    "trainable_params": head.num_trainable_parameters(),
                }
            )
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch": b, "oom": True})
        finally:
            head = tr = None  # noqa: F841 - free the head and optimizer state before the next size
            gc.collect()
            if target.device.type == "cuda":
                torch.cuda.empty_cache()
        print("train", "online" if batcher is not None else "cache", json.dumps(rows[-1]), flush=True)
        if rows[-1].get("oom"):
            break
    return rows


def bench_decode(target, cfg, args, capture: str) -> dict:
    from vsd.data.sources import TINY_PROMPTS
    from vsd.decoding.eagle import EagleDrafter
    from vsd.decoding.engine import generate_ar, generate_spec
    from vsd.models.draft import build_head

    prompts = [target.chat_ids([{"role": "user", "content": t}]) for t in TINY_PROMPTS[: args.prompts]]
    base = dataclasses.replace(
        cfg.decoding,
        temperature=0.0,
        max_new_tokens=args.max_new,
        ngram_branch=0,
        shape="fixed",
        capture=capture,
        captured_step=True,
        max_len=args.max_len,
    )

    def timed(run) -> tuple[float, float, float, int, int]:
        run(prompts[0])  # warm-up: allocator, graph capture
        wall = draft = verify = 0.0
        toks = fwd = 0
        for ids in prompts:
            r = run(ids)
            wall, draft, verify = wall + r.wall_s, draft + r.draft_s, verify + r.verify_s
            toks, fwd = toks + len(r.tokens), fwd + r.target_forwards
        return wall, draft, verify, toks, fwd

    reset_peak(target.device)
    wall, _, _, toks, _ = timed(lambda ids: generate_ar(target, ids, base))
    out: dict = {"ar": {"ms_per_token": 1000 * wall / toks, "new_tokens": toks, "capture": capture}}
    print("ar", json.dumps(out["ar"]), flush=True)
    d2t = torch.arange(min(cfg.model.draft.vocab_size, target.vocab_size))
    drafter = EagleDrafter(build_head(target, cfg.model.draft, d2t, seed=0), target.dtype)
    trees = []
    for d, k, n in args.trees:
        dcfg = dataclasses.replace(base, depth=d, top_k=k, total_tokens=n)
        wall, draft, verify, toks, fwd = timed(lambda ids, c=dcfg: generate_spec(target, drafter, ids, c))
        steps = max(fwd - len(prompts), 1)
        trees.append(
            {
                "shape": f"{d}x{k}x{n}",
                "depth": d,
                "top_k": k,
                "nodes": n,
                "draft_ms": 1000 * draft / steps,
                "verify_ms": 1000 * verify / steps,
                "step_ms": 1000 * wall / steps,
                "tau_random_weights": toks / fwd,  # meaningless (random draft and target): recorded, not used
            }
        )
        print("tree", json.dumps(trees[-1]), flush=True)
    out["trees"] = trees
    out["peak_mem_mb"] = peak_mb(target.device)
    if target.device.type == "cuda":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gpu_decode import graph_times

        g = graph_times(target, drafter)
        out["graph_ms"] = g
        dt = str(target.dtype).replace("torch.", "")
        for t in trees:
            tag = f"d{t['depth']} k{t['top_k']} n{t['nodes']} T=0 {dt}"
            t["graph_draft_ms"] = g.get(f"step draft {tag}")
            t["graph_verify_ms"] = g.get(f"step verify {tag}")
        out["graph_ar_ms"] = g.get("target 1 rows")
    return out


def _mb(v: float | None) -> str:
    return f"{v:,.0f}" if v is not None else "-"


def table(rec: dict) -> str:
    tau = rec["published_tau"]
    lines = [
        f"{rec['model']} architecture, random weights; {rec['device']}; torch {rec['torch']}, transformers "
        f"{rec['transformers']}; seq {rec['seq']}; command: {rec['command']}",
        "",
        "| features | batch | tokens/s | peak GPU MiB |",
        "|---|---|---|---|",
    ]
    for r in rec["features_cached"]:
        lines.append(f"| cached (build + write, {r['bytes_per_token']:.0f} B/token) | {r['batch']} | {r['tokens_per_s']:,.0f} | {_mb(r['peak_mem_mb'])} |")  # fmt: skip
    lines.append(
        f"| cached (memory-mapped read) | - | {rec['features_read']['read_tokens_per_s']:,.0f} | - |"
    )
    for r in rec["features_online"]:
        lines.append(f"| online (one forward per batch) | {r['batch']} | " + ("OOM | - |" if r.get("oom") else f"{r['tokens_per_s']:,.0f} | {_mb(r['peak_mem_mb'])} |"))  # fmt: skip
    lines += ["", "| draft training | batch | step ms | tokens/s | peak GPU MiB |", "|---|---|---|---|---|"]
    for mode in ("cache", "online"):
        for r in rec["train"][mode]:
            if r.get("oom"):
                lines.append(f"| {mode} features | {r['batch']} | OOM | - | - |")
            else:
                lines.append(f"| {mode} features | {r['batch']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {_mb(r['peak_mem_mb'])} |")  # fmt: skip
    dec = rec["decode"]
    ar = dec["ar"]["ms_per_token"]
    lines += [
        "",
        f"AR ({dec['ar']['capture']}): {ar:.2f} ms/token"
        + (
            f"; GPU time of the 1-row graph {dec['graph_ar_ms']:.2f} ms" if dec.get("graph_ar_ms") else ""
        ),  # fmt: skip
        "",
        f"| tree d×k×n | draft ms/step | verify ms/step | GPU ms draft + verify graphs | speedup at τ={tau['tau']} (AR ms × τ / (draft + verify)) | GPU-time ceiling at τ |",  # fmt: skip
        "|---|---|---|---|---|---|",
    ]
    for t in dec["trees"]:
        g = f"{t['graph_draft_ms']:.2f} + {t['graph_verify_ms']:.2f}" if t.get("graph_draft_ms") else "-"
        ceil = f"{t['gpu_ceiling']:.2f}×" if t.get("gpu_ceiling") else "-"
        lines.append(f"| {t['shape']} | {t['draft_ms']:.2f} | {t['verify_ms']:.2f} | {g} | {t['speedup_at_tau']:.2f}× | {ceil} |")  # fmt: skip
    lines.append(f"\nτ source: {tau['source']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, choices=sorted(PUBLISHED_TAU))
    ap.add_argument("--tiny", action="store_true", help="shrunken architecture on the CPU: a smoke test")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024; --tiny 64)")
    ap.add_argument("--seqs", type=int, default=None, help="sequences (default 64; --tiny 8)")
    ap.add_argument("--feature-batches", nargs="*", type=int, default=None, help="default 1 16")
    ap.add_argument("--train-batches", nargs="*", type=int, default=None, help="default 1 2 4 8 16 32 64")
    ap.add_argument(
        "--steps", type=int, default=None, help="timed optimizer steps per batch size (3; --tiny 1)"
    )
    ap.add_argument("--trees", nargs="*", type=_tree, default=[(3, 4, 8), (4, 8, 24), (6, 10, 60)])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument(
        "--max-new", type=int, default=None, help="new tokens per prompt (default 128; --tiny 12)"
    )
    ap.add_argument("--max-len", type=int, default=1024, help="decoding.max_len (static KV slots)")
    ap.add_argument(
        "--tau", type=float, default=None, help="τ for the speedup column (default: PUBLISHED_TAU)"
    )
    ap.add_argument("--workdir", default=None, help="where the caches go (default: a temp dir, removed)")
    ap.add_argument("--out", default="gpu_8b.json")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra config overrides")
    args = ap.parse_args()
    tiny = args.tiny
    device = torch.device(args.device or ("cpu" if tiny else "cuda"))
    seq = args.seq or (64 if tiny else 1024)
    n_seqs = args.seqs or (8 if tiny else 64)
    feature_batches = args.feature_batches or [1, 4 if tiny else 16]
    train_batches = args.train_batches or ([1, 2] if tiny else [1, 2, 4, 8, 16, 32, 64])
    args.steps = args.steps or (1 if tiny else 3)
    args.max_new = args.max_new or (12 if tiny else 128)
    if tiny:
        args.trees = [(d, min(k, 4), min(n, 12)) for d, k, n in args.trees][:2]
    if max(train_batches) > n_seqs:
        n_seqs = max(train_batches)

    from vsd.config import compose
    from vsd.features.dataset import CachedFeatures, OnlineCollate, OnlineFeatures
    from vsd.models.target import load_target

    # bf16 autocast for the draft step, as on the GPU runs of docs/bench_gpu.md (benchmarks/gpu_train.py); off
    # for the CPU smoke test (slow without bf16 units)
    overrides = [
        f"model={args.model}",
        "model.random_init=true",
        "loss=eagle3",
        f"train.bf16_autocast={not tiny}",
    ]
    _, cfg = compose([*overrides, *(TINY if tiny else []), *args.overrides])[0]
    dtype = "float32" if tiny else "bfloat16"
    t0 = time.time()
    target = load_target(cfg.model, tempfile.gettempdir(), str(device), dtype)
    print(f"target built in {time.time() - t0:.1f}s: {target.num_layers} layers, H={target.hidden_size}, "
          f"V={target.vocab_size}, {sum(p.numel() for p in target.model.parameters()):,} parameters, "
          f"{target.dtype} on {target.device}", flush=True)  # fmt: skip
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu8b-"))
    try:
        data = synthetic_dataset(work, target.vocab_size, n_seqs, seq)
        cached_rows, fdir = bench_features_cached(target, data, work, feature_batches)
        read = bench_cache_read(fdir)
        online = OnlineFeatures(target, data)
        online_rows = bench_online(target, online, list(range(n_seqs)), train_batches, reps=2)
        train = {
            "cache": bench_train(
                target, cfg, CachedFeatures(fdir), None, n_seqs, seq, train_batches, args.steps
            ),
            "online": bench_train(
                target, cfg, online, OnlineCollate(target), n_seqs, seq, train_batches, args.steps
            ),
        }
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    decode = bench_decode(target, cfg, args, "cuda_graph" if device.type == "cuda" else "static")
    tau, source = PUBLISHED_TAU[args.model]
    if args.tau is not None:
        tau, source = args.tau, "--tau"
    ar = decode["ar"]["ms_per_token"]
    for t in decode["trees"]:
        t["speedup_at_tau"] = tau * ar / (t["draft_ms"] + t["verify_ms"])
        if t.get("graph_draft_ms") and decode.get("graph_ar_ms"):
            t["gpu_ceiling"] = tau * decode["graph_ar_ms"] / (t["graph_draft_ms"] + t["graph_verify_ms"])
    import transformers

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    rec = {
        "model": args.model,
        "tiny": tiny,
        "device": card,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": "python " + " ".join(sys.argv),
        "architecture": dataclasses.asdict(cfg.model.architecture),
        "parameters": sum(p.numel() for p in target.model.parameters()),
        "seq": seq,
        "sequences": n_seqs,
        "published_tau": {"tau": tau, "source": source},
        "features_cached": cached_rows,
        "features_read": read,
        "features_online": online_rows,
        "train": train,
        "decode": decode,
    }
    rec["table"] = table(rec)
    print(rec["table"])
    Path(args.out).write_text(json.dumps(rec, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
