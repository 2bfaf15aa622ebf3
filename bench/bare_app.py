"""The floor for the prediction service: a bare FastAPI endpoint that returns a constant.

Served by uvicorn with the same settings as ``regula serve`` (uvloop + httptools, same worker
count), it measures what FastAPI + uvicorn cost per request before any model work.
"""

from fastapi import FastAPI

app = FastAPI()

CONSTANT = {"predictions": [1], "probabilities": [[0.25, 0.75]], "classes": [0, 1]}


@app.post("/models/{model_id}/predict")
async def predict(model_id: str) -> dict:
    """Ignore the body and the model id; return a constant prediction."""
    return CONSTANT


@app.get("/healthz")
async def healthz() -> dict:
    """Liveness probe, as in the real service."""
    return {"status": "ok"}
