"""Request and response bodies of the Open Inference Protocol v2 (REST) and MLflow scoring."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Tensor datatypes of the protocol, with the NumPy dtype of their binary form (little-endian).
DTYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
# Datatypes a numeric feature accepts (BOOL is refused, as JSON true/false are by /predict).
NUMERIC_DTYPES = frozenset(DTYPES) - {"BOOL"}


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 is the batch dimension N.")


class ModelMetadata(BaseModel):
    """A model's name, platform and tensors. ``inputs`` are the features a prediction reads, one
    [N, 1] tensor each; ``parameters.features`` lists every trained feature (the columns of the
    alternative ``input`` tensor, for all-numeric models)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]


class RequestInput(BaseModel):
    """One input tensor: ``data`` in JSON (flat or nested, row-major), or its bytes after the
    JSON header (``parameters.binary_data_size``)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=1000)
    shape: list[int] = Field(max_length=8)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(BaseModel):
    """An output to return; ``parameters.binary_data`` asks for it in binary form."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=1000)
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """``POST /v2/models/{id}/infer``. ``parameters.binary_data_output`` asks for every output in
    binary form."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(default=None, max_length=1000)
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=10_000)
    outputs: list[RequestOutput] | None = Field(default=None, max_length=16)


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """Outputs: ``label`` [N] (classification; BYTES, INT64, FP64 or BOOL as the classes are),
    ``probabilities`` [N, C] (likelihood classifiers; in ``parameters.classes`` order), or
    ``predictions`` [N] FP64 (regression)."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ProtocolError(BaseModel):
    """The protocol's error body: one sentence."""

    error: str


class MLflowError(BaseModel):
    """MLflow's error body."""

    error_code: str = Field(description="BAD_REQUEST, RESOURCE_DOES_NOT_EXIST, UNAUTHENTICATED")
    message: str


class InvocationsResponse(BaseModel):
    """Labels (classifiers, as MLflow's pyfunc answers for scikit-learn classifiers) or values."""

    predictions: list[Any]
