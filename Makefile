# cskd-pipeline: the everyday commands. Everything runs inside ./.venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MANIFEST ?= quickstart.yaml
FASHION_ROOT ?= ../shared/data/fashion-mnist
CIFAR_JPEG ?= ../shared/data/cifar10-jpeg.tar.gz

.PHONY: install pipeline test test-slow test-all lint docs bench compare clean mutants

# The environment is a file target: `make pipeline` and `make test` build it when it is
# missing or older than pyproject.toml, so a fresh clone needs one command for each.
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[dev,docs,serve,openvino,mlflow,cluster,timm,search]'
	touch $(STAMP)

install:  ## (re)create .venv with the project (editable), OpenVINO, MLflow, timm, Optuna, the docs and the dev tools
	rm -f $(STAMP)
	$(MAKE) $(STAMP)

pipeline: $(STAMP)  ## run a manifest end to end (MANIFEST=name-in-manifests/ or a path)
	$(BIN)/cskd-pipeline run -m $(MANIFEST)

# Three pytest processes side by side, each on one thread (OMP_NUM_THREADS=1). Why (issue 39):
# - torch's default of two threads beside another busy process made a training test 1.6 times as
#   slow (its OpenMP threads wait for a core the other process holds);
# - a third process fills the time one of the others waits (servers starting, worker processes),
#   so the two cores stay busy; the groups are balanced by measured durations;
# - one process running the whole suite once died of SIGSEGV near its end, with no Python frame.
# The first runs every test file not named below, so a new file is always run. The others'
# output follows the first's; any failing fails the target.
SECOND := tests/pipeline/test_tracking.py tests/pipeline/test_serve.py tests/pipeline/test_new_backend.py \
	tests/stages/test_qad.py tests/stages/test_serving_stage.py tests/stages/test_champion_unit.py \
	tests/stages/test_gate.py tests/stages/test_stats.py tests/pipeline/test_trust.py tests/pipeline/test_manifest.py
THIRD := tests/pipeline/test_reliability.py tests/pipeline/test_study.py tests/pipeline/test_release.py \
	tests/pipeline/test_fingerprint.py tests/pipeline/test_model_sources.py \
	tests/stages/test_int8_defaults.py tests/stages/test_pipeline_stages.py \
	tests/pipeline/test_behaviour_digests.py tests/pipeline/test_releases_unit.py tests/pipeline/test_codec_unit.py \
	tests/test_docs.py tests/test_startup.py tests/test_import_graph.py tests/pipeline/test_search_unit.py \
	tests/pipeline/test_cli_conventions.py
FIRST_SKIPS := $(foreach t,$(SECOND) $(THIRD),--ignore=$(t))
PYTEST_ARGS ?=
FAST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)
test: $(STAMP)  ## the test suite without the tests marked slow (4:28 on 2 CPU cores, 4:45 with torch's AVX2 kernels forced; the host's speed varies by 10-15 %). PYTEST_ARGS=--durations=20 adds options to every process
	@second=$$(mktemp); third=$$(mktemp); export CSKD_TEST_SHARED=$$(mktemp -d); \
	$(FAST) -p no:cacheprovider $(SECOND) > $$second 2>&1 & s=$$!; \
	$(FAST) -p no:cacheprovider $(THIRD) > $$third 2>&1 & t=$$!; \
	$(FAST) tests $(FIRST_SKIPS); first=$$?; \
	wait $$s; s=$$?; wait $$t; t=$$?; \
	echo "--- $(SECOND)"; cat $$second; echo "--- $(THIRD)"; cat $$third; rm -f $$second $$third; \
	rm -rf "$$CSKD_TEST_SHARED"; \
	exit $$(( first != 0 ? first : s != 0 ? s : t ))

test-slow: $(STAMP)  ## the tests marked slow: the longest end-to-end runs (CI runs them after `make test`)
	$(BIN)/python -m pytest -q -m "slow and not cluster"

test-all: $(STAMP)  ## every test
	$(BIN)/python -m pytest -q

lint: $(STAMP)  ## ruff, and the import layers (import-linter contracts in pyproject.toml)
	$(BIN)/ruff check pipeline foundation stages stagekit cskd exports serving tests benchmarks tools
	$(BIN)/lint-imports

docs: $(STAMP)  ## the documentation site into site/ (offline, strict: a broken link or page fails); open site/index.html
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: $(STAMP)  ## speed benchmarks, JSON in bench/ (Fashion-MNIST in FASHION_ROOT, the CIFAR-10 JPEG copy in CIFAR_JPEG)
	$(BIN)/python benchmarks/engine.py --out bench/engine.json
	$(BIN)/python benchmarks/backends.py --out bench/backends.json
	$(BIN)/python benchmarks/latency.py --root $(FASHION_ROOT) --out bench/latency.json
	$(BIN)/python benchmarks/streaming.py --source $(CIFAR_JPEG) --out bench/streaming.json
	$(BIN)/python benchmarks/int8_cpu.py --cifar $(CIFAR_JPEG) --out bench/int8_cpu.json
	$(BIN)/python benchmarks/int8_default.py --cifar $(CIFAR_JPEG) --out bench/int8_default.json
	$(BIN)/python benchmarks/fingerprint.py --cifar $(CIFAR_JPEG) --out bench/fingerprint.json
	$(BIN)/python benchmarks/strong_view.py --out bench/strong_view.json
	$(BIN)/python benchmarks/serving_load.py --out bench/serving.json
	$(BIN)/python benchmarks/startup.py --out bench/startup.json

mutants: $(STAMP)  ## mutation testing of the protection modules (mutmut; slow, not in CI): a table, and mutants/summary.json
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 > mutants.log 2>&1 || (tail -c 2000 mutants.log; exit 1)
	$(BIN)/python tools/mutants_summary.py

# The method study of the README on Fashion-MNIST (long: see "Studies"). COMPARE_SET adds
# overrides, e.g. COMPARE_SET='-o data.max_train_samples=10000 -o student.train.epochs=4'.
COMPARE_SET ?=
compare: $(STAMP)  ## CE vs KD vs DIST vs CS-KD, 5 seeds, batch 64 and 256, on Fashion-MNIST (cskd-pipeline study)
	$(BIN)/cskd-pipeline study -m fashion-mnist -o data.root=$(FASHION_ROOT) $(COMPARE_SET) \
		--losses ce,kd,dist,cskd-core,cskd-paper --seeds 5 --batch-sizes 64
	$(BIN)/cskd-pipeline study -m fashion-mnist -o data.root=$(FASHION_ROOT) $(COMPARE_SET) -o name=fashion-mnist-b256 \
		--losses kd,cskd-core --seeds 5 --batch-sizes 256

clean:
	rm -rf .cskd shipped bench/*.json
