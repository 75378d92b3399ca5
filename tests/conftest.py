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

# Under pytest-xdist (`make test`) each worker's torch pool gets its share of the usable cores: two workers
# with a pool of two threads each would oversubscribe a 2-core machine. Tests that time or count threads set
# their own.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    import torch

    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session")
def default_target():
    """The embedded default target (SmolLM2-135M-Instruct; dtype=auto: bf16 where the CPU has native bf16,
    else fp32), converted once into the user cache."""
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


@pytest.fixture(scope="module")
def tiny():
    """(tiny_random target in fp32 with larger random weights, its config), one torch thread. The default init
    repeats one token forever, which would make every draft trivially right; these weights give peaked logits
    with distinct argmaxes, so drafts are accepted and rejected. Module scope: each decoding test module gets
    its own copy."""
    import torch

    from tests.decoding.helpers import one_thread
    from vsd.config import compose
    from vsd.models.target import load_target

    _, cfg = compose(["model=tiny_random"])[0]
    target = load_target(cfg.model, cfg.paths.cache_dir, "cpu", "float32")
    g = torch.Generator().manual_seed(0)
    for p in target.model.parameters():
        if p.dim() >= 2:
            p.data = 0.2 * torch.randn(p.shape, generator=g)
    with one_thread():
        yield target, cfg
