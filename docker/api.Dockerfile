# The API image: FastAPI, SQLAlchemy, the Celery producer and boto3; no ML libraries at all.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv

COPY pyproject.toml README.md alembic.ini constraints.txt ./
COPY app ./app
COPY migrations ./migrations
RUN pip install -c constraints.txt . && useradd --uid 10001 --no-create-home squash
USER 10001

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["squash", "serve", "--host", "0.0.0.0", "--port", "8000"]
