# One command builds everything from nothing: `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE=1
export RAY_USAGE_STATS_ENABLED=0

.PHONY: install demo test test-fast lint bench gpu-check clean cluster-local cluster-local-down

install: $(STAMP)

# torch/torchvision pinned to the releases that lie on local disk (pip takes them offline);
# the package itself accepts any torch>=2.4.
$(STAMP): pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import ray_xray, ray.tune, ray.train, optuna, albumentations"
	$(VENV)/bin/ray-xray --help >/dev/null
	touch $(STAMP)

# A short real sweep: 8 trials across architectures on synthetic X-rays at 64 px, 4 epochs each.
demo: $(STAMP)
	@echo "make demo: 8 trials x 4 epochs at 64 px, 2 at a time, then the ensemble; its expected length follows once the data is ready"
	$(PY) -m ray_xray.tune --space all --trials 8 --set epochs=4 --set img_size=64 \
		--storage runs/tune --name demo-$$(date +%Y%m%d-%H%M%S)

# Everything, in two passes: the tests that start no Ray spread over every core (pytest-xdist),
# then the Ray tests (and the wheel's), two at a time with each file kept on one worker (its
# module fixtures built once). Two Ray tests at a time overlap one's start-up and waits with the
# other's compute: 6 min 45 s against 8 min 13 s one at a time (27 tests, quiet 2-core AMD EPYC,
# 2026-12-07). --durations shows where the time went.
test: $(STAMP)
	@$(PY) -m pytest -q -n auto -m "not serial" --durations=10; first=$$?; \
	$(PY) -m pytest -q -m serial -n 2 --dist loadfile --durations=15; second=$$?; \
	test $$first -eq 0 -a $$second -eq 0

# Without the Ray tests and the two biggest models' training steps, over every core
# (pytest-xdist; under 2 minutes on 2 cores): for every edit; `make test` before a merge.
test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto -m "not slow and not slow_ray" --timeout 120

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Every benchmark (tens of minutes on 2 cores; run on a quiet machine) -> benchmarks/RESULTS.md.
# `make bench BENCH_ARGS=--smoke-test` for a fast look (--quick: its old name); BENCH_ARGS="--only precision,roofline" for some.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

# On any CUDA machine, no download: the `cuda` tests (every model x fp32/bf16/fp16, NCCL
# collectives, the device input path, a 2-trial sweep on one GPU), then the feed benchmark and its
# table (results in runs/gpu-check/). Uses .venv when there is one, else python3 (e.g. with the
# offline wheel bundle of ../shared/gpu_bundle on PYTHONPATH).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	@$(GPU_PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'error: gpu-check: no CUDA GPU visible')"
	$(GPU_PY) -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py
	$(GPU_PY) -m benchmarks --only feed --out runs/gpu-check
	@sed -n '/^\*images/,/^$$/p' runs/gpu-check/RESULTS.md

clean:
	rm -rf runs .pytest_cache

# A multi-node Ray cluster on this machine (fake nodes that autoscale): cluster/README.md.
# Clients need RAY_AUTH_MODE=token (ray 2.60 token authentication).
cluster-local: $(STAMP)
	$(VENV)/bin/ray get-auth-token --generate >/dev/null
	RAY_AUTH_MODE=token RAY_FAKE_CLUSTER=1 $(VENV)/bin/ray start --head --num-cpus=0 \
		--resources='{"ray_xray_head": 1}' --autoscaling-config=cluster/local.yaml \
		--dashboard-host 127.0.0.1
	@echo "cluster up: export RAY_AUTH_MODE=token RAY_ADDRESS=auto; stop: make cluster-local-down"

# Stops every Ray process of this user on the machine (see cluster/README.md).
cluster-local-down:
	$(VENV)/bin/ray stop --force
