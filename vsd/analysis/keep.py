"""Keep run records compact: ``python -m vsd.analysis.keep SRC DST`` (what scripts/keep_records.sh runs).

SRC is a sweep folder, a run folder or a folder of them; DST becomes the compact part (runs.jsonl.gz, part.json,
trials.jsonl; vsd/analysis/record_store.py) and is replaced. ``--expand PART DST`` writes a compact part back
as raw run folders. Bad input (no such folder, no run.json below SRC, an unreadable file) is one line on
stderr and exit status 1, with nothing written.
"""

from __future__ import annotations

import argparse
import sys

from vsd.analysis.record_store import RecordError, compact, expand


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--expand", action="store_true", help="compact part SRC -> raw run folders in DST")
    ap.add_argument("src")
    ap.add_argument("dst")
    args = ap.parse_args(argv)
    try:
        if args.expand:
            print(f"wrote {expand(args.src, args.dst)} run folders to {args.dst}")
            return 0
        done = compact(args.src, args.dst)
    except RecordError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for note in done.notes:
        print(f"note: {note}", file=sys.stderr)
    print(done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
