# One command builds everything from nothing: `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE=1
export RAY_USAGE_STATS_ENABLED=0

.PHONY: install demo test lint bench clean

install: $(STAMP)

# torch/torchvision pinned to the releases that lie on local disk (pip takes them offline);
# the package itself accepts any torch>=2.4.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install --quiet "torch>=2.4" "torchvision>=0.19"
	$(PY) -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import ray_xray, ray.tune, ray.train, optuna, albumentations"
	touch $(STAMP)

# A short real sweep: 8 trials across architectures on synthetic X-rays at 64 px, 4 epochs each.
demo: $(STAMP)
	$(PY) -m ray_xray.tune --space all --trials 8 --set epochs=4 --set img_size=64 \
		--storage runs/tune --name demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs .pytest_cache
