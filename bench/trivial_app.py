"""The baseline: a trivial FastAPI endpoint served by the same uvicorn settings."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/v1/jobs/{job_id}")
def get_job(job_id: str) -> dict[str, str]:
    return {"id": job_id, "state": "queued"}
