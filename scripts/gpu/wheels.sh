#!/usr/bin/env bash
# Wheels a bare GPU machine (Python 3.12, torch + transformers 5.17 preinstalled, no index) lacks to run vsd's
# benchmarks (e.g. benchmarks/gpu_8b.py): transformers at our pin and what it needs at our pins, Hydra and
# OmegaConf (antlr4's runtime is sdist-only: built here as a pure-Python wheel). Versions come from
# requirements.lock. There: pip install --no-index --no-deps --target /tmp/site DIR/*.whl; PYTHONPATH=/tmp/site:.
#   bash scripts/gpu/wheels.sh [DIR]          # default DIR: .whl (keep it out of git: .git/info/exclude)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-.whl}
mkdir -p "$out"
names="transformers huggingface-hub tokenizers httpx2 httpcore2 hf-xet typer shellingham truststore hydra-core
omegaconf rich tqdm filelock click markdown-it-py mdurl pygments h11 anyio sniffio idna certifi"
for n in $names; do
  pin=$(grep -E "^$n==" requirements.lock | sed 's/ .*//')
  [ -n "$pin" ] || { echo "wheels.sh: $n is not in requirements.lock" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$out" "$pin"
done
python3 -m pip wheel -q --no-deps -w "$out" "$(grep -E '^antlr4-python3-runtime==' requirements.lock | sed 's/ .*//')"
du -sh "$out"
