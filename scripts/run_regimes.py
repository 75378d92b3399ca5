"""The regime experiment (docs/results.md, "Regimes"): every job is a plain `python run.py ...`, several at once.

  python scripts/run_regimes.py --gpu --jobs 16           # one GPU, 16 processes
  python scripts/run_regimes.py --gpu --gpus 2 --jobs 24  # two GPUs, 12 processes each
  python scripts/run_regimes.py --jobs 2                  # this CPU: the same jobs (days here)
  python scripts/run_regimes.py --tiny --jobs 2           # a rehearsal on the tiny random model (minutes)

Phases, each waiting for the previous one:
  1. per data regime (control, source, sampled): data, features and the EAGLE-3 warm-up base
     (experiment=regime_base); beside them, the target's greedy continuations of the eval prompts (cached,
     shared by every later eval: python -m vsd.evaluation.reference);
  2. every arm (experiment=regime_{eagle3,vsd,vsd_token,eagle3_time,power}) x regime x seed: train, then the T=0
     reference eval (eval=regimes); the tree regime runs only its VSD arm (its EAGLE-3 arms are the control's);
  3. T=1 decoded evals of the EAGLE-3 and both VSD arms on the same 140 turns and 256 new tokens (T=1 cannot use
     the reference, so they decode; without the AR baseline, which tau does not need: each MT-Bench turn 2
     follows the arm's own turn-1 sample, a draw from the target's law whatever the draft); with phase 2 in the
     same call, each arm's T=1 eval follows it in the same worker (no idle tail).
Order: the VSD arms first (the slowest), then EAGLE-3, the power control and the equal-time arm, so a stopped
call has the pairs before the controls.
Several processes share a card through CUDA MPS where it runs (`nvidia-cuda-mps-control -d` before this
script; the records of 2026-11-29 were made so: 12 processes per H200, an EAGLE-3 arm's 400 steps in 62 s
against 122 s with 16 time-sliced processes on one card the run before). A job whose run.json says completed
is skipped, so rerunning continues after a stop (each training resumes from its own checkpoint). Jobs write
under --root (default outputs/regimes); logs in <root>/logs/.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import queue
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_REGIMES = ("control", "source", "sampled")
ARMS = ("regime_eagle3", "regime_vsd", "regime_vsd_token", "regime_eagle3_time", "regime_power")
GPU = [
    "device=cuda",
    "decoding.capture=cuda_graph",
    "decoding.max_len=2048",
    "train.data_on_device=true",
    "train.features_batch_size=32",
]
TINY = [
    "model=tiny_random",
    "dataset=tiny",
    "dataset.num_prompts=16",
    "dataset.gen_batch_size=8",
    "eval.per_category=1",
    "decoding.max_new_tokens=12",
    "loss.depth=3",
    "loss.tree_total_tokens=8",
    "loss.tree_top_k=2",
]
TINY_STEPS = {
    "regime_base": 4,
    "regime_eagle3": 4,
    "regime_vsd": 4,
    "regime_vsd_token": 4,
    "regime_eagle3_time": 6,
    "regime_power": 2,
}
T1 = ["eval.method=decode", "decoding.temperature=1.0", "eval.ar_baseline=false"]
PRIORITY = ("regime_vsd", "regime_vsd_token", "regime_eagle3", "regime_power", "regime_eagle3_time")


def completed(run_dir: Path) -> list[str] | None:
    """The overrides a completed run at ``run_dir`` was made with; None when it is not there or not completed."""
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return list(run.get("job", {}).get("overrides") or []) if run.get("status") == "completed" else None


def card_env(gpu: str | None) -> dict[str, str] | None:
    """The environment of a job on card ``gpu`` (a name from :func:`gpu_slots`); None: as inherited."""
    return None if gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}


def job(
    overrides: list[str],
    run_dir: Path,
    log_dir: Path,
    gpu: str | None = None,
    live: set[subprocess.Popen] | None = None,
) -> tuple[str, int, float]:
    """Run one `python run.py` job unless it already completed with the same overrides; returns (name, exit
    code, seconds). A run completed with other overrides (an older plan in the same --root) fails the job
    with a one-line reason: it is neither kept as if it were this job nor overwritten. ``gpu``: the card it
    sees (CUDA_VISIBLE_DEVICES), None to leave the environment as it is. ``live``: the running process is in it
    while it runs (scripts/run_strong.py stops them at its deadline)."""
    name = str(run_dir.relative_to(log_dir.parent)).replace("/", "_")
    if (done := completed(run_dir)) is not None:
        if done == overrides:
            return name, 0, 0.0
        print(
            f"[regimes]   {name}: {run_dir} completed with other overrides; remove it or use another --root"
        )
        return name, 3, 0.0
    t0 = time.time()
    cmd = [sys.executable, "run.py", *overrides, f"hydra.run.dir={run_dir}"]
    env = card_env(gpu)
    with open(log_dir / f"{name}.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        if live is not None:
            live.add(proc)
        try:
            rc = proc.wait()
        finally:
            if live is not None:
                live.discard(proc)
    return name, rc, time.time() - t0


Job = tuple[list[str], Path]


def chain(jobs: list[Job], log_dir: Path, gpu: str | None = None) -> list[tuple[str, int, float]]:
    """Run jobs one after another (a T=1 eval after the arm it evaluates); stop at the first failure."""
    done = []
    for overrides, run_dir in jobs:
        done.append(job(overrides, run_dir, log_dir, gpu))
        if done[-1][1]:
            break
    return done


def visible_cards(gpus: int) -> list[str]:
    """The names of the first ``gpus`` cards this process may use: entries of an inherited
    CUDA_VISIBLE_DEVICES (a scheduler's choice), else indices 0..gpus-1. Raises ValueError when the inherited
    list names fewer."""
    inherited = [c for c in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if c.strip()]
    if not inherited:
        return [str(i) for i in range(gpus)]
    if len(inherited) < gpus:
        raise ValueError(f"--gpus {gpus}: CUDA_VISIBLE_DEVICES names only {len(inherited)} card(s)")
    return inherited[:gpus]


def gpu_slots(workers: int, gpus: int) -> queue.Queue:
    """One token per worker, naming the card its jobs see: worker i -> card i mod ``gpus`` (0: no choice), so
    each card runs about ``workers / gpus`` processes at any time whatever order the jobs finish in."""
    cards = visible_cards(gpus) if gpus else []
    slots: queue.Queue = queue.Queue()
    for i in range(workers):
        slots.put(cards[i % gpus] if gpus else None)
    return slots


def run_phase(label: str, chains: list[list[Job]], workers: int, log_dir: Path, gpus: int = 0) -> list[str]:
    print(f"[regimes] {label}: {sum(map(len, chains))} jobs, {workers} at once", flush=True)
    failed = []
    slots = gpu_slots(workers, gpus)

    def on_slot(c: list[Job]) -> list[tuple[str, int, float]]:
        gpu = slots.get()
        try:
            return chain(c, log_dir, gpu)
        finally:
            slots.put(gpu)

    with cf.ThreadPoolExecutor(workers) as pool:
        for results in pool.map(on_slot, chains):
            for name, rc, secs in results:
                print(
                    f"[regimes]   {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} {secs:.0f}s",
                    flush=True,
                )
                if rc:
                    failed.append(name)
    return failed


def arm_runs(seeds: list[int], wanted: list[str]) -> list[tuple[str, str, int]]:
    """(regime, arm, seed) of phase 2, in the order they start: by PRIORITY (the slowest, VSD, first: a shorter
    tail; the controls last), then seed, then regime. The tree regime runs only regime_vsd (its EAGLE-3 arms
    are the control's), after the other regimes' VSD runs."""
    arms = [(r, a, s) for s in seeds for r in DATA_REGIMES for a in ARMS if a in wanted]
    if "regime_vsd" in wanted:
        arms += [("tree", "regime_vsd", s) for s in seeds]
    return sorted(arms, key=lambda x: PRIORITY.index(x[1]))  # stable: seed, then regime, within an arm


def int_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; anything else is argparse's one-line usage error."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2, help="processes at once")
    ap.add_argument("--gpu", action="store_true", help="device=cuda, captured decoding, data on the GPU")
    ap.add_argument(
        "--gpus", type=int, default=0, help="spread the processes over this many cards (0: as found)"
    )
    ap.add_argument("--tiny", action="store_true", help="rehearse on the tiny random model")
    ap.add_argument("--root", type=Path, default=ROOT / "outputs" / "regimes")
    ap.add_argument("--seeds", type=int_list, default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--phases", type=int_list, default="1,2,3", help="comma-separated, of 1,2,3")
    ap.add_argument(
        "--arms", default=",".join(a.removeprefix("regime_") for a in ARMS), help="comma-separated"
    )
    args = ap.parse_args(argv)
    seeds, phases = args.seeds, set(args.phases)
    if not phases <= {1, 2, 3}:
        ap.error(f"--phases: {args.phases} names a phase other than 1, 2, 3")
    wanted = [f"regime_{a}" for a in args.arms.split(",")]
    if unknown := [a.removeprefix("regime_") for a in wanted if a not in ARMS]:
        ap.error(f"--arms: {unknown} not among {[a.removeprefix('regime_') for a in ARMS]}")
    if args.gpus < 0 or (args.gpus and not args.gpu):
        ap.error("--gpus needs --gpu and a count >= 1")
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: needs at least 1")
    try:
        first_card = visible_cards(args.gpus)[0] if args.gpus else None
    except ValueError as e:
        ap.error(str(e))
    root = args.root.resolve()
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    common = ["tracker=none", "threads=1", *(GPU if args.gpu else []), *(TINY if args.tiny else [])]

    def exp(name: str, regime: str, seed: int | None = None) -> list[str]:
        ov = [f"experiment={name}", f"regime={regime}", *common]
        if seed is not None:
            ov.append(f"seed={seed}")
        if name != "regime_base":
            data = "control" if regime == "tree" else regime
            ov.append(f"train.init_from={root / data / 'base' / 'draft'}")
        if args.tiny:
            ov.append(f"train.steps={TINY_STEPS[name]}")
        return ov

    arm_dir = {a: a.removeprefix("regime_") for a in ARMS}
    failed: list[str] = []
    if 1 in phases:
        with open(log_dir / "references.log", "w") as log:
            refs = subprocess.Popen(  # the eval prompts' greedy continuations, beside the bases (first card)
                [sys.executable, "-m", "vsd.evaluation.reference", *exp("regime_base", "control")],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=card_env(first_card),
            )
            bases = [[(exp("regime_base", r), root / r / "base")] for r in DATA_REGIMES]
            failed += run_phase(
                "phase 1: data, features, bases, references", bases, args.jobs, log_dir, args.gpus
            )
            if refs.wait():
                failed.append("references")

    def t1(r: str, arm: str, s: int) -> Job:
        d = root / r / arm_dir[arm] / f"seed{s}"
        ov = [*exp("regime_base", r, s), "stages=[eval]", f"draft.checkpoint={d / 'draft'}", *T1]
        ov.append(f"run_name=regime-{r}-{arm_dir[arm].replace('_', '-')}")  # the arm, not the base
        return ov, d / "t1"

    arms = arm_runs(seeds, wanted)
    with_t1 = {"regime_eagle3", "regime_vsd", "regime_vsd_token"}
    if 2 in phases:
        chains = [
            [
                (exp(a, r, s), root / r / arm_dir[a] / f"seed{s}"),
                *([t1(r, a, s)] if 3 in phases and a in with_t1 else []),
            ]
            for r, a, s in arms
        ]
        label = "phase 2: arms (train + T=0 reference eval)" + (
            ", each followed by its T=1 eval" if 3 in phases else ""
        )
        failed += run_phase(label, chains, args.jobs, log_dir, args.gpus)
    elif 3 in phases:
        chains = [[t1(r, a, s)] for r, a, s in arms if a in with_t1]
        failed += run_phase("phase 3: T=1 decoded evals", chains, args.jobs, log_dir, args.gpus)
    print(f"[regimes] done; {len(failed)} failed: {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
