"""The baseline: a bare FastAPI app answering an empty JSON object, nothing else."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {}
