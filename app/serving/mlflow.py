"""MLflow's scoring protocol: ``POST /models/{id}/invocations``, and the one-model app of
``regula serve-model`` (``/invocations``, ``/ping``, ``/health``, ``/version``, as
``mlflow models serve`` answers).

Bodies: ``application/json`` with one of ``dataframe_split`` (pandas ``to_dict(orient="split")``),
``dataframe_records`` (row objects), ``instances`` or ``inputs`` (row objects, value lists in
``feature_names`` order, or columns ``{feature: [values]}``), or ``text/csv`` with a header line.
The answer is ``{"predictions": [...]}``: class labels for classifiers (what MLflow's pyfunc answers
for a scikit-learn classifier), values for regression. Errors are MLflow's
``{"error_code": "BAD_REQUEST", "message": "<sentence>"}`` with 400 (``RESOURCE_DOES_NOT_EXIST``
with 404, ``UNAUTHENTICATED`` with 401). Auth on /models/{id}/invocations: the rules of every
other model route; the ``serve-model`` app takes no key (like ``mlflow models serve``: whoever
reaches its port may score its one model).
"""

from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

from app.core.auth import OwnerDep
from app.core.bodies import NumpyJSONResponse, read_prediction_body
from app.core.errors import install_error_handlers
from app.models import loading
from app.serving import service
from app.serving.routing import protocol_route
from app.serving.schemas import InvocationsResponse, MLflowError

CODES = {401: "UNAUTHENTICATED", 404: "RESOURCE_DOES_NOT_EXIST", 500: "INTERNAL_ERROR"}


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error_code": CODES.get(status, "BAD_REQUEST"), "message": message}


Route = protocol_route(_error)
router = APIRouter(prefix="/models", tags=["models"], route_class=Route)

RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": MLflowError, "description": "A bad body; the message says what."},
    404: {"model": MLflowError, "description": "No such model (or not yours)."},
    415: {"model": MLflowError, "description": "Neither application/json nor text/csv."},
}
BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object"},
                "examples": {
                    "dataframe_split": {
                        "value": {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}}
                    },
                    "dataframe_records": {"value": {"dataframe_records": [{"a": 1, "b": 2}]}},
                    "instances": {"value": {"instances": [[1, 2]]}},
                    "inputs": {"value": {"inputs": {"a": [1], "b": [2]}}},
                },
            },
            "text/csv": {"schema": {"type": "string"}, "example": "a,b\n1,2\n"},
        },
    }
}


async def _invoke(item: loading.Loaded, request: Request) -> Response:
    raw = await read_prediction_body(request)
    answer = await service.invocations(item, raw, request.headers.get("content-type"))
    return NumpyJSONResponse(answer)


@router.post(
    "/{model_id}/invocations",
    response_model=InvocationsResponse,
    summary="Predict (MLflow scoring protocol)",
    responses=RESPONSES,
    openapi_extra=BODY,
)
async def invocations(model_id: str, request: Request, owner: OwnerDep) -> Response:
    """MLflow's /invocations for one of the caller's models: ``{"predictions": [...]}``."""
    item = await service.get_loaded(request, model_id, owner)
    return await _invoke(item, request)


def create_model_app(item: loading.Loaded) -> FastAPI:
    """The app of ``regula serve-model``: one loaded model at MLflow's scoring paths."""
    app = FastAPI(
        title=f"Regula model {item.id}",
        version=service.SERVER_VERSION,
        summary="One model, served with MLflow's scoring protocol.",
    )
    install_error_handlers(app)
    app.state.item = item
    scoring = APIRouter(route_class=Route)

    @scoring.get("/ping", summary="Liveness (MLflow)", response_class=PlainTextResponse)
    def ping() -> str:
        """200 with an empty line while the model is loaded."""
        return "\n"

    @scoring.get("/health", summary="Liveness (MLflow)", response_class=PlainTextResponse)
    def health() -> str:
        """The same as /ping."""
        return "\n"

    @scoring.get("/version", summary="Server version", response_class=PlainTextResponse)
    def version() -> str:
        """The Regula version (MLflow answers its own)."""
        return service.SERVER_VERSION

    @scoring.post(
        "/invocations",
        response_model=InvocationsResponse,
        summary="Predict (MLflow scoring protocol)",
        responses=RESPONSES,
        openapi_extra=BODY,
    )
    async def model_invocations(request: Request) -> Response:
        """``{"predictions": [...]}`` of the served model."""
        return await _invoke(request.app.state.item, request)

    app.include_router(scoring)
    return app
