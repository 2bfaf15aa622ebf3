"""Response schemas of GET /jobs/{id}/path: a search job's regularization path."""

from typing import Literal

from pydantic import BaseModel, Field


class PathPointRead(BaseModel):
    """One value of the searched parameter: its cross-validation scores and the full-data fit."""

    value: float = Field(description="The parameter's value (e.g. the l1 strength).")
    cv_loss: float | None = Field(description="Mean held-out data loss over the folds.")
    cv_loss_se: float | None = Field(description="Its standard error, std(ddof=1) / sqrt(K).")
    cv_metric: float | None = Field(description="Mean held-out r2 (regression) or accuracy.")
    cv_metric_se: float | None
    nonzero: int | None = Field(description="Non-zero weights of the fit on all training rows.")
    selected_features: list[str] | None = Field(description="Features with a non-zero weight.")
    feature_norms: dict[str, float] | None = Field(
        description="Each feature's first-layer weight norm ||W_1[feature]||_2."
    )
    coef: dict[str, float] | None = Field(
        default=None, description="Linear models: the weight of each encoded column."
    )
    intercept: float | list[float] | None = Field(
        default=None, description="The exact linear path only: the fit's intercept."
    )
    folds_scored: int | None = Field(
        description="How many folds have scored this point (all of them once complete)."
    )


class Chosen(BaseModel):
    """The two choices: min (lowest mean CV loss) and 1se (largest value within one SE)."""

    min: float | None
    one_se: float | None = Field(alias="1se", serialization_alias="1se")
    used: Literal["min", "1se"]
    value: float | None = Field(description="The value the final model was (or will be) fit at.")

    model_config = {"populate_by_name": True}


class PathRead(BaseModel):
    """A search job's path; while it runs, what the points stored so far say."""

    job_id: str
    status: str
    param: str = Field(description="The engine's path parameter, e.g. regularization.l1.")
    grid: list[float] = Field(description="Every value of the search, descending.")
    folds: int | None
    metric_name: str | None
    complete: bool = Field(description="True once every split has finished and been combined.")
    points: list[PathPointRead]
    chosen: Chosen
    model_id: str | None = Field(description="The model fit at the chosen value, once trained.")
