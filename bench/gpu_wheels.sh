#!/usr/bin/env bash
# Wheels the device machine lacks (its image has torch, transformers, safetensors, numpy,
# pandas, pyarrow, httpx, click…; ../.library/device/KINDS.md lists them), pinned to this
# checkout's versions, for Python 3.12 on x86-64. Run here, before bench/gpu_check.sh or
# bench/gpu_quality_check.sh (auto-round: issue 22's AutoRound stage).
set -euo pipefail
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
    alembic==1.20.1 amqp==5.4.2 annotated-types==0.8.0 billiard==4.3.2 boto3==1.44.8 \
    botocore==1.44.8 celery==5.7.0 click-didyoumean==0.3.1 click-plugins==1.1.1.2 \
    click-repl==0.4.1 compressed-tensors==0.19.0 datasets==5.2.0 dill==0.4.1 \
    fastapi==0.165.0 jmespath==1.1.0 kombu==5.7.0 llmcompressor==0.14.0.1 loguru==0.7.3 \
    Mako==1.4.3 multiprocess==0.70.19 prompt_toolkit==3.0.53 pydantic==2.14.4 \
    pydantic-settings==2.16.3 pydantic_core==2.50.5 python-dotenv==1.2.4 s3transfer==0.19.3 \
    SQLAlchemy==2.1.9 starlette==1.10.0 structlog==26.1.0 typing-inspection==0.4.5 \
    uvicorn==0.54.0 vine==5.1.0 wcwidth==0.9.4 tzlocal==5.4.5 psycopg==3.3.9 \
    psycopg-binary==3.3.9 greenlet redis==8.1.0 trl==1.16.0 auto-round==0.15.1 py-cpuinfo
du -sh .whl
