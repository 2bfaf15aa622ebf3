"""Image adapters: an ``.npz`` of arrays ``x``/``y``, or a ``.zip`` of one folder per class.

Both are written as two ``.npy`` files in a folder, ``x.npy`` (N, C, H, W) and ``y.npy`` (N,), so
workers memory-map the pixels (``np.load(path, mmap_mode="r")``) instead of reading them whole.

- ``.npz``: ``x`` is (N, H, W) or (N, C, H, W), uint8 or float; ``y`` is (N,) integers or strings.
  Arrays are read with ``allow_pickle=False`` semantics: an object array is refused, never
  unpickled. Other arrays in the archive are ignored.
- ``.zip``: Keras' ``image_dataset_from_directory`` layout, ``<class>/<file>.png|jpg|jpeg`` (one
  shared top folder is allowed), decoded with Pillow. Labels are the folder names. Files that
  are not PNG/JPEG images (by extension), hidden files and ``__MACOSX/`` are IGNORED and counted
  (``ignored_files`` in the profile). Form field ``image_size`` ("H,W") resizes every image
  (bilinear, as Keras); without it all images must have the same size. ``color_mode``
  (grayscale|rgb) picks 1 or 3 channels; by default grayscale if every image is, else rgb.

Archives are checked as they are read: member names with ``..`` or absolute paths are refused,
and both the declared and the actual inflated sizes must stay under the upload limit (zip bombs).
"""

import zipfile
from pathlib import Path

from app.datasets.errors import clip
from app.datasets.ingest.archive import Limits, check_member_names, invalid
from app.datasets.ingest.common import Ingested
from app.datasets.ingest.imagezip import from_folders
from app.datasets.ingest.npzfile import from_npz
from app.datasets.ingest.spool import Spooled

__all__ = ["Limits", "convert_images"]


def convert_images(upload: Spooled, dest: Path, *, limits: Limits) -> Ingested:
    """Unpack the spooled ``.npz`` or class-folder ``.zip`` into ``dest`` (a new folder)."""
    try:
        zf = zipfile.ZipFile(upload.path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise invalid(
            f"The file is not a readable zip archive (truncated or corrupt?): {clip(str(exc))}",
            "invalid_archive",
        ) from None
    with zf:
        check_member_names(infos, limits)
        dest.mkdir()
        names = {i.filename for i in infos}
        filename = (upload.filename or "").lower()
        try:
            if filename.endswith(".npz") or any(n.endswith(".npy") for n in names):
                return from_npz(zf, dest, limits)
            return from_folders(zf, infos, dest, limits, upload.fields)
        except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
            raise invalid(f"The archive is corrupt: {clip(str(exc))}", "invalid_archive") from None
