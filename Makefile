# seg_ros developer commands. `make setup` builds .venv/ (idempotent), `make test`
# runs lint and the test suite (the README's test command), `make demo` runs the
# node on the package's sample frames (or DATA=folder|video|bag, TOPIC= for a bag).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?=
TOPIC ?=
# Exported ONNX files and TensorRT engines (training runs under runs/ are kept).
CACHE := $(or $(SEG_ROS_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/seg_ros)

.PHONY: setup lint test demo clean

setup: $(STAMP)

$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest test

demo: setup
	$(VENV)/bin/seg_ros demo $(if $(DATA),--data $(DATA),) $(if $(TOPIC),--topic $(TOPIC),)

clean:
	rm -rf $(VENV) build install log *.egg-info demo_output $(CACHE)/onnx $(CACHE)/engines
