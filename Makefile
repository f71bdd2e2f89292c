# Two commands on a fresh machine: `make train` and `make test`. Both create .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# The official files offline, when present beside the project (see README, "Data"); else data/.
DATA_DIR ?= $(if $(wildcard ../shared/data/mnist/train-images-idx3-ubyte.gz),../shared/data/mnist,data)
# Extra config to stack on the default one (mnist_lightning/default.yaml, always read): make train CONFIG=configs/seed.yaml
CONFIG ?=

# The versions the suite passed with (docs/dependencies.md); `make lock` writes it anew.
LOCK := requirements/lock.txt
# torch/torchvision: the releases these machines serve from local disk (a range would admit them too).
TORCH := "torch==2.14.1" "torchvision==0.29.1"

.PHONY: venv lock train test lint bench stats clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev,onnx,postgres,serve]"
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed

# The lock anew (scripts/lock.sh): every extra, at the newest versions pyproject.toml allows, frozen. Then
# `make test` on it, and commit it if the suite passes (docs/dependencies.md).
lock:
	scripts/lock.sh $(PYTHON) $(TORCH)

train: venv
	$(PY) -m mnist_lightning fit $(if $(CONFIG),--config $(CONFIG)) --data.data_dir $(DATA_DIR)

# The whole suite on every core (pytest-xdist; worksteal rebalances the long tests). The inner loop
# (about 2.5 minutes on 2 cores, against about 10 for all): $(PY) -m pytest -m "not slow and not real_data" -n auto
test: venv
	$(PY) -m pytest -n auto --dist worksteal

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) benchmarks/speed.py --data-dir $(DATA_DIR)

clean:
	rm -rf $(VENV) lightning_logs
