"""GET /models/{id}/plots/sparsity.svg|png: the sparsity plot of a trained model."""

from typing import Literal

from fastapi import APIRouter, Response

from app.core.auth import OwnerDep
from app.core.deps import SessionDep
from app.jobs.plots import MEDIA_TYPES
from app.models import plots

router = APIRouter(prefix="/models", tags=["models"])


@router.get(
    "/{model_id}/plots/sparsity.{fmt}",
    summary="Plot a model's sparsity (SVG or PNG)",
    response_class=Response,
    responses={
        404: {"description": "No such model (or not yours)."},
        200: {"content": {"image/svg+xml": {}, "image/png": {}}, "description": "The plot."},
    },
)
def model_sparsity_plot(
    model_id: str, fmt: Literal["svg", "png"], session: SessionDep, owner: OwnerDep
) -> Response:
    """First-layer |W| (zeros marked), feature importance (dropped greyed), zeros per layer."""
    content = plots.sparsity_plot(session=session, model_id=model_id, owner_id=owner, fmt=fmt)
    return Response(content=content, media_type=MEDIA_TYPES[fmt])
