"""Small file helpers shared by the data, eval and model loaders."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from vsd.errors import UserError


def package_file(package: str, rel: str, key: str) -> Path:
    """A data file inside an installed package, located without importing it (its deps may be absent).

    ``key`` is the config key named in the one-line error when the package or file is missing.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"{key}: Python package {package!r} is not installed (`make setup` installs the pinned version; "
            "see requirements-data.txt)"
        )
    f = Path(list(spec.submodule_search_locations)[0]) / rel
    if not f.exists():
        raise UserError(f"{key}: {f} not found in package {package!r} (wrong package version?)")
    return f


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while b := fh.read(chunk):
            h.update(b)
    return h.hexdigest()
