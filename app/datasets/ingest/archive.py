"""Zip archives as upload containers: member names checked, inflated bytes counted (zip bombs).

Names with ``..`` components or absolute paths are refused before anything is read; the sum of
the declared sizes, and then the bytes actually inflated, must stay under the upload limit.
"""

import re
import zipfile

from app.core.errors import InvalidInput, PayloadTooLarge
from app.datasets.errors import clip
from app.datasets.ingest.common import FILE_LOC, megabytes

READ_BYTES = 1024 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


class Limits:
    """What one image upload may inflate to (from settings, passed in by the service)."""

    def __init__(self, max_bytes: int, max_decoded_bytes: int, max_pixels: int) -> None:
        self.max_bytes = max_bytes
        self.max_decoded_bytes = max_decoded_bytes
        self.max_pixels = max_pixels
        self.inflated = 0  # bytes read out of the archive so far

    def take(self, n: int) -> None:
        self.inflated += n
        if self.inflated > self.max_bytes:
            raise bomb(self.max_bytes)


def bomb(max_bytes: int) -> PayloadTooLarge:
    """The 413 of an archive that inflates past the upload limit."""
    return PayloadTooLarge(
        f"The archive inflates to more than the upload limit of {megabytes(max_bytes)} "
        "(REGULA_MAX_UPLOAD_MB).",
        loc=FILE_LOC,
        code="archive_too_large",
    )


def invalid(msg: str, code: str, *where: str | int) -> InvalidInput:
    """A 422 for the uploaded file (``where``: the member or array at fault)."""
    return InvalidInput(msg, loc=[*FILE_LOC, *where], code=code)


def check_member_names(infos: list[zipfile.ZipInfo], limits: Limits) -> None:
    """Refuse unsafe member names, and archives whose declared sizes pass the limit."""
    declared = 0
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts or "\\" in name:
            raise invalid(
                f"The archive member {clip(name)!r} has an absolute path or a '..' component; "
                "refusing to unpack it.",
                "unsafe_path",
                clip(name),
            )
        declared += info.file_size
    if declared > limits.max_bytes:
        raise bomb(limits.max_bytes)


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: Limits) -> bytes:
    """The member's bytes, counted against the limit as they inflate (not trusting the header)."""
    out = bytearray()
    with zf.open(info) as f:
        while block := f.read(READ_BYTES):
            limits.take(len(block))
            out += block
            if len(out) > info.file_size:
                raise bomb(limits.max_bytes)
    return bytes(out)
