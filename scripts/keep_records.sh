#!/usr/bin/env bash
# Keep a sweep's (or a run's) records in the repo in the compact form (docs/records/README.md), replacing DST:
#   scripts/keep_records.sh multirun/paper/main docs/records/paper/cpu/main
# DST gets runs.jsonl.gz (gzip; one line per run: run.json, config.json, metrics.json, data_card.json, eval.jsonl,
# train_log.jsonl, run.log), part.json (sweep_summary.json, multirun.yaml, job logs) and, for an Optuna search,
# trials.jsonl (its study.db's trials). Dropped: draft weights, pickles, .hydra/ copies, W&B folders.
# Runs vsd.analysis.record_store.compact (python -m vsd.analysis.keep); vsd.analysis reads DST as it reads raw
# run folders, so `make results` works on either.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: keep_records.sh SRC DST" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
[ -x "$py" ] || py=python3
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m vsd.analysis.keep "$1" "$2"
