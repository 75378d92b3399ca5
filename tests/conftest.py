import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# Tests never talk to W&B servers and never compete for both cores with each other's torch pools.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def default_target():
    """The embedded default target (SmolLM2-135M-Instruct, bf16), converted once into the user cache."""
    from vsd.config import compose
    from vsd.models.target import load_target

    _, cfg = compose([])[0]
    return load_target(cfg.model, cfg.paths.cache_dir, "cpu", cfg.dtype)


@pytest.fixture(scope="session")
def tiny_target():
    from vsd.config import compose
    from vsd.models.target import load_target

    _, cfg = compose(["model=tiny_random"])[0]
    return load_target(cfg.model, cfg.paths.cache_dir, "cpu", cfg.dtype)
