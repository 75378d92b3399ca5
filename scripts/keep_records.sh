#!/usr/bin/env bash
# Copy run records into the repo without the large, derivable files (draft weights, draft-vocab tensors):
#   scripts/keep_records.sh multirun/paper/main docs/records/paper/cpu/main
# What stays: config.json, run.json, metrics.json, eval.jsonl, train_log.jsonl, data_card.json, .hydra/, logs.
set -euo pipefail
src=${1:?usage: keep_records.sh SRC DST}
dst=${2:?usage: keep_records.sh SRC DST}
[ -d "$src" ] || { echo "error: $src: no such folder" >&2; exit 1; }
rm -rf "$dst.tmp" && mkdir -p "$dst.tmp"
(cd "$src" && tar cf - --exclude=draft --exclude=draft_vocab.safetensors --exclude=wandb .) | tar xf - -C "$dst.tmp"
rm -rf "$dst" && mv "$dst.tmp" "$dst"
echo "kept $(find "$dst" -name metrics.json | wc -l) run records in $dst"
