# memloc: `make reproduce` runs the whole study (miniature profile, CPU); `make test` runs the tests.
# Both create .venv and install the package with its dev extras on first use; later runs install nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROFILE ?= mini

.PHONY: setup test check-sync nbdev-test pytest nbval reproduce smoke report docs lab clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Notebooks are the source: they must be clean and the package must be their export.
check-sync: $(STAMP)
	$(BIN)/nbdev-clean
	$(BIN)/nbdev-export
	@if [ -n "$$(git status --porcelain -- nbs memloc)" ]; then \
	  echo "nbdev-clean / nbdev-export changed these files; run them and commit:"; \
	  git status --porcelain -- nbs memloc; exit 1; fi

nbdev-test: $(STAMP)
	$(BIN)/nbdev-test --n-workers 2

pytest: $(STAMP)
	$(BIN)/python -m pytest tests/ -q

# The committed reference notebooks of the miniature, re-executed and compared (see tests/nbval.cfg).
nbval: $(STAMP)
	@if ls runs/mini/*.ipynb >/dev/null 2>&1; then \
	  $(BIN)/python -m pytest --nbval-lax runs/mini/ --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider -q; \
	else echo "no reference notebooks in runs/mini yet"; fi

test: check-sync nbdev-test pytest nbval

reproduce: $(STAMP)
	$(BIN)/memloc reproduce --profile $(PROFILE)

# The dry run of the full-scale path: profile [smoke] (tiny models in the released file formats, an
# ImageNet-layout folder, SSCD and Inception stand-ins) through every stage's full-scale branch, on the
# CPU, with every process offline (tests/offline), and the stages that take a dtype once more under bf16
# autocast (their own output folders), and the stages of the scan, the samples and UnitMem's maps once more in two
# gloo processes (`--nproc 2`, runs/smoke/nproc2); then tests/test_smoke_run.py checks what they wrote, and
# tests/test_smoke_nproc.py that the two processes wrote what one did.
SMOKE_ENV := PYTHONPATH=$(CURDIR)/tests/offline MEMLOC_OFFLINE_LOG=$(CURDIR)/runs/smoke/network.log
smoke: $(STAMP)
	rm -rf runs/smoke figures/smoke runs/smoke-bf16 figures/smoke-bf16
	mkdir -p runs/smoke
	$(SMOKE_ENV) $(BIN)/memloc smoke-assets runs/smoke/assets
	$(SMOKE_ENV) $(BIN)/memloc reproduce --profile smoke --no-progress
	$(SMOKE_ENV) $(BIN)/memloc reproduce --profile smoke --only var_scales rar_blocks --no-progress \
	  --set dtype=bfloat16 --set figures_dir=figures/smoke-bf16 --set runs_dir=runs/smoke-bf16
	PYTHONPATH=$(CURDIR)/tests/offline MEMLOC_OFFLINE_LOG=$(CURDIR)/runs/smoke/network-nproc2.log \
	  $(BIN)/memloc reproduce --profile smoke --only extraction quality var_scales rar_blocks --no-progress --nproc 2 \
	  --set runs_dir=runs/smoke/nproc2 --set figures_dir=runs/smoke/nproc2/figures
	MEMLOC_SMOKE_RUN=1 $(BIN)/python -m pytest tests/test_smoke_run.py tests/test_smoke_nproc.py -q -p no:cacheprovider

# The report again from the saved results, every figure redrawn from its table (no stage runs).
report: $(STAMP)
	$(BIN)/python -m memloc.report --profile $(PROFILE) --redraw

# The static site (report first, then every notebook with its outputs) into site/, checked offline.
docs: $(STAMP)
	$(BIN)/python -m memloc.report --profile $(PROFILE) --site

# The notebooks in JupyterLab (nbs/start_here.md gives the reading order).
lab: $(STAMP)
	cd nbs && $(abspath $(BIN))/jupyter lab
