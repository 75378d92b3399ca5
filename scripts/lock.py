"""Check the locked environment against what the project declares.

    python scripts/lock.py check              # the locks satisfy pyproject.toml and requirements-data.txt
    python scripts/lock.py check --installed  # ... and this interpreter has exactly the locked versions

`make lock` writes the locks (uv pip compile, with hashes); `make setup` installs from them with
`--require-hashes --no-deps`, so a fresh machine gets the same packages CI saw. `make test` runs `check`
first: a dependency added or re-pinned in pyproject.toml without `make lock` fails with one line naming it.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {  # lock file -> the files it is compiled from
    "requirements.lock": ["pyproject.toml"],
    "requirements-data.lock": ["requirements-data.txt"],
    "requirements-client.lock": ["requirements-client.txt"],
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def read_lock(path: Path) -> dict[str, str]:
    """name -> pinned version of every `name==version` line of a pip requirements lock."""
    pins = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def declared(source: Path) -> list[Requirement]:
    """The requirements a source file declares (pyproject: dependencies and every optional extra)."""
    if source.suffix == ".toml":
        project = tomllib.loads(source.read_text())["project"]
        lines = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            lines += extra
    else:
        lines = [ln.split("#")[0].strip() for ln in source.read_text().splitlines()]
    return [Requirement(ln) for ln in lines if ln]


def stale(root: Path = ROOT) -> list[str]:
    """One message per declared requirement that its lock does not pin to a version it allows."""
    problems = []
    for lock_name, sources in LOCKS.items():
        lock = root / lock_name
        if not lock.exists():
            problems.append(f"{lock_name}: missing (run `make lock`)")
            continue
        pins = read_lock(lock)
        for source in sources:
            for req in declared(root / source):
                name = canonicalize_name(req.name)
                if name not in pins:
                    problems.append(f"{source}: {req} is not in {lock_name} (run `make lock`)")
                elif not req.specifier.contains(Version(pins[name]), prereleases=True):
                    problems.append(f"{source}: {req} but {lock_name} pins {pins[name]} (run `make lock`)")
    return problems


def drift(root: Path = ROOT) -> list[str]:
    """One message per locked package that this interpreter lacks or has at another version."""
    problems = []
    for lock_name in LOCKS:
        for name, version in read_lock(root / lock_name).items():
            try:
                have = metadata.version(name)
            except metadata.PackageNotFoundError:
                problems.append(f"{name}=={version} ({lock_name}) is not installed (run `make setup`)")
                continue
            if Version(have) != Version(version):
                problems.append(f"{name} is {have}, {lock_name} pins {version} (run `make clean-venv setup`)")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["check"])
    ap.add_argument("--installed", action="store_true", help="also compare this interpreter's packages")
    ap.add_argument("--root", type=Path, default=ROOT)
    args = ap.parse_args(argv)
    problems = stale(args.root) + (drift(args.root) if args.installed else [])
    for p in problems:
        print(f"lock: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
