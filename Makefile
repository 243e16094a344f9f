PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install protos test lint demo bench bench-scale clean

install:  ## install pxgrpc and the development tools (editable)
	$(PIP) install -q -e '.[dev]'

protos:  ## regenerate pxgrpc/_proto from protos/
	$(PYTHON) scripts/gen_protos.py

test:  ## run the test suite (starts real controllers and engines)
	$(PYTHON) -m pytest -q

lint:  ## ruff + mypy
	$(PYTHON) -m ruff check pxgrpc tests scripts
	$(PYTHON) -m ruff format --check pxgrpc tests scripts
	$(PYTHON) -m mypy pxgrpc

demo: install  ## a local cluster running the seed notebook's workflow
	$(PYTHON) scripts/demo.py

bench:  ## pxgrpc vs ipyparallel, same machine, same run
	$(PIP) install -q -e '.[dev,bench]'
	$(PYTHON) scripts/bench.py

bench-scale:  ## issue 12's table with 64 engines per system (several minutes)
	$(PIP) install -q -e '.[dev,bench]'
	$(PYTHON) scripts/bench.py --scale 64

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
