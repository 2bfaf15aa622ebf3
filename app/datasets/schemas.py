"""Dataset schemas: what an upload returns and what GET /datasets lists."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.jobs.schemas import UTCDateTime

COLUMN_EXAMPLES: list[dict[str, Any]] = [
    {
        "name": "income",
        "dtype": "number",
        "missing": 2,
        "min": 12.5,
        "max": 310.0,
        "mean": 71.2,
        "max_abs": 310.0,
        "distinct": 583,
        "distinct_capped": False,
    },
    {
        "name": "region",
        "dtype": "string",
        "missing": 0,
        "min": None,
        "max": None,
        "mean": None,
        "max_abs": None,
        "distinct": 4,
        "distinct_capped": False,
    },
]

DATASET_EXAMPLE: dict[str, Any] = {
    "id": "3f2c0a6d9b8e4f1a8c7d6e5f4a3b2c1d",
    "name": "credit.csv",
    "kind": "table",
    "rows": 600,
    "columns": COLUMN_EXAMPLES,
    "size_bytes": 61234,
    "created_at": "2026-11-28T00:00:00Z",
}


class ClassCount(BaseModel):
    """One label value of an image dataset and how many images carry it."""

    value: int | str
    count: int = Field(ge=0)


class ColumnSummary(BaseModel):
    """Type and summary statistics of one column, computed over its non-missing cells."""

    model_config = ConfigDict(json_schema_extra={"example": COLUMN_EXAMPLES[0]})

    name: str = Field(description="Column name from the header line (or the array's name).")
    dtype: Literal["number", "string", "image"] = Field(
        description="'number' for integer or float columns, 'string' for anything else "
        "(used as a categorical feature), 'image' for the pixel column of an image dataset."
    )
    missing: int = Field(
        ge=0,
        description="Missing cells: empty, only whitespace, NA, N/A, NaN, nan, null, NULL, "
        "None, #N/A...",
    )
    min: float | None = Field(default=None, description="Smallest value (numbers, pixels).")
    max: float | None = Field(default=None, description="Largest value (numbers, pixels).")
    mean: float | None = Field(default=None, description="Arithmetic mean (numbers, pixels).")
    max_abs: float | None = Field(
        default=None,
        description="Largest absolute value (numbers, pixels): values near float64's range "
        "(say 1e300) make every training run diverge, so jobs can name the column.",
    )
    distinct: int | None = Field(
        default=None,
        description="Distinct non-missing values (numbers and strings), exact unless "
        "'distinct_capped', in which case there are more than this many (the count stops at "
        "10,000). None for the image column.",
    )
    distinct_capped: bool = Field(
        default=False, description="True when 'distinct' is a lower bound (more than 10,000)."
    )


class ImageProfile(BaseModel):
    """What an image dataset holds: one image's shape, pixel type and range, classes, thumbnails."""

    image_column: str = Field(description="'x' (.npz upload) or 'image' (zip of class folders).")
    label_column: str = Field(description="'y' (.npz upload) or 'label' (zip of class folders).")
    shape: list[int] = Field(description="Shape (C, H, W) of one image.")
    dtype: str = Field(description="Pixel type: 'uint8', 'float32' or 'float64'.")
    min: float = Field(description="Smallest pixel value.")
    max: float = Field(description="Largest pixel value.")
    mean: float = Field(description="Mean pixel value.")
    classes: list[ClassCount] = Field(
        description="Each label with its count, sorted by label (at most 1,000 listed; the label "
        "column's 'distinct' counts them all)."
    )
    thumbnails: list[str] = Field(
        description="Up to 4 images (the first of each class first) as small PNG data URIs."
    )
    ignored_files: int = Field(
        ge=0,
        description="Zip upload: members skipped because they are not PNG/JPEG images (by "
        "extension), hidden files or __MACOSX/. Always 0 for .npz.",
    )


class DatasetRead(BaseModel):
    """An uploaded dataset: its size and one summary per column."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"example": DATASET_EXAMPLE})

    id: str
    name: str = Field(description="The 'name' form field, else the uploaded file's name.")
    kind: Literal["table", "images"] = Field(
        description="'table' (CSV or Parquet upload) or 'images' (.npz or zip of class folders: "
        "an image column x/image and a label column y/label)."
    )
    rows: int = Field(ge=1, description="Data rows (the header line not counted), or images.")
    columns: list[ColumnSummary]
    images: ImageProfile | None = Field(
        default=None, description="Image datasets only: the images' profile."
    )
    size_bytes: int = Field(ge=0, description="Bytes of the uploaded file.")
    created_at: UTCDateTime
