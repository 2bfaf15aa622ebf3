"""Dataset schemas: what an upload returns and what GET /datasets lists."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.schemas import UTCDateTime

COLUMN_EXAMPLES = [
    {
        "name": "income",
        "dtype": "number",
        "missing": 2,
        "min": 12.5,
        "max": 310.0,
        "mean": 71.2,
        "distinct": None,
    },
    {
        "name": "region",
        "dtype": "string",
        "missing": 0,
        "min": None,
        "max": None,
        "mean": None,
        "distinct": 4,
    },
]

DATASET_EXAMPLE = {
    "id": "3f2c0a6d9b8e4f1a8c7d6e5f4a3b2c1d",
    "name": "credit.csv",
    "rows": 600,
    "columns": COLUMN_EXAMPLES,
    "size_bytes": 61234,
    "created_at": "2026-11-28T00:00:00Z",
}


class ColumnSummary(BaseModel):
    """Type and summary statistics of one column, computed over its non-missing cells."""

    model_config = ConfigDict(json_schema_extra={"example": COLUMN_EXAMPLES[0]})

    name: str = Field(description="Column name from the header line.")
    dtype: Literal["number", "string"] = Field(
        description="'number' for integer or float columns, 'string' for anything else "
        "(used as a categorical feature)."
    )
    missing: int = Field(
        ge=0, description="Missing cells: empty, NA, N/A, NaN, nan, null, NULL, None, #N/A..."
    )
    min: float | None = Field(default=None, description="Smallest value (numbers only).")
    max: float | None = Field(default=None, description="Largest value (numbers only).")
    mean: float | None = Field(default=None, description="Arithmetic mean (numbers only).")
    distinct: int | None = Field(
        default=None, description="Number of distinct non-missing values (strings only)."
    )


class DatasetRead(BaseModel):
    """An uploaded table: its size and one summary per column."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"example": DATASET_EXAMPLE})

    id: str
    name: str = Field(description="The 'name' form field, else the uploaded file's name.")
    rows: int = Field(ge=1, description="Data rows (the header line not counted).")
    columns: list[ColumnSummary]
    size_bytes: int = Field(ge=0, description="Bytes of the uploaded file.")
    created_at: UTCDateTime
