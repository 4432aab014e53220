# seg_ros developer commands. `make setup` builds .venv/ (idempotent), `make test`
# runs the test suite (the README's test command), `make demo` runs the node on images.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?=

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

test: setup
	$(PY) -m pytest test

demo: setup
	$(VENV)/bin/seg_ros demo $(if $(DATA),--data $(DATA),)

clean:
	rm -rf $(VENV) build install log *.egg-info
