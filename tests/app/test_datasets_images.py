"""Image uploads: .npz (x, y) and zips of class folders, stored as .npy files workers memory-map;
hostile archives (object arrays, corrupt images, unsafe paths, zip bombs) refused with nothing
left behind."""

import base64
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_digits
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import settings
from app.core.db import get_sessionmaker
from app.core.errors import MAX_ERRORS
from app.datasets import service
from app.datasets.orm import Dataset


def upload(client: TestClient, content: bytes, filename: str, **data: str) -> Any:
    return client.post("/datasets", files={"file": (filename, content)}, data=data or None)


def state(session: Session) -> tuple[int, list[str]]:
    session.expire_all()
    rows = session.scalar(select(func.count()).select_from(Dataset)) or 0
    root = Path(settings.data_dir)
    return rows, sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _row(dataset_id: str) -> Dataset:
    with get_sessionmaker(settings.database_url)() as s:
        return s.get_one(Dataset, dataset_id)


def npz(compressed: bool = False, **arrays: Any) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def digits_zip(n: int = 60) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The first ``n`` scikit-learn digits as PNGs in class folders, plus what they hold."""
    digits = load_digits()
    images = (digits.images[:n] * (255 / 16)).round().astype(np.uint8)  # (n, 8, 8)
    labels = digits.target[:n]
    members = {
        f"digits/{y}/img{i:03d}.png": png(img)
        for i, (img, y) in enumerate(zip(images, labels, strict=True))
    }
    members["digits/README.txt"] = b"not an image"
    members["__MACOSX/digits/._img000.png"] = b"junk"
    return zip_of(members), images, labels


def decode_data_uri(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))


# --- .npz ----------------------------------------------------------------------------------------


def test_npz_uint8_images_are_stored_memory_mapped(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(30, 12, 10), dtype=np.uint8)
    y = np.arange(30) % 3
    r = upload(client, npz(x=x, y=y), "mnist-like.npz")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["kind"], body["rows"]) == ("images", 30)
    assert [c["name"] for c in body["columns"]] == ["x", "y"]
    assert body["columns"][0]["dtype"] == "image"
    profile = body["images"]
    assert profile["shape"] == [1, 12, 10] and profile["dtype"] == "uint8"
    assert (profile["min"], profile["max"]) == (float(x.min()), float(x.max()))
    assert profile["mean"] == pytest.approx(x.mean())
    assert profile["classes"] == [{"value": k, "count": 10} for k in range(3)]
    assert len(profile["thumbnails"]) == 4
    assert decode_data_uri(profile["thumbnails"][0]).size == (10, 12)
    assert body["columns"][1]["distinct"] == 3
    assert client.get(f"/datasets/{body['id']}").json() == body

    loaded_x, loaded_y = service.load_images(_row(body["id"]), settings.data_dir)
    assert isinstance(loaded_x, np.memmap) and loaded_x.shape == (30, 1, 12, 10)
    np.testing.assert_array_equal(loaded_x[:, 0], x)
    np.testing.assert_array_equal(loaded_y, y)
    with pytest.raises(ValueError, match="load_images"):
        service.load_table(_row(body["id"]))


def test_compressed_npz_float_nchw_images_with_string_labels(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3, 5, 6)).astype(np.float32)
    y = np.array(["cat", "dog"] * 4)
    r = upload(client, npz(compressed=True, x=x, y=y), "rgb.npz")
    assert r.status_code == 201, r.text
    profile = r.json()["images"]
    assert profile["shape"] == [3, 5, 6] and profile["dtype"] == "float32"
    assert profile["min"] == pytest.approx(float(x.min()))
    assert profile["classes"] == [{"value": "cat", "count": 4}, {"value": "dog", "count": 4}]
    loaded_x, loaded_y = service.load_images(_row(r.json()["id"]))
    np.testing.assert_array_equal(loaded_x, x)
    assert list(loaded_y) == list(y)


def test_deleting_an_image_dataset_removes_its_folder(client: TestClient, session: Session) -> None:
    r = upload(client, npz(x=np.zeros((2, 3, 3), np.uint8), y=np.array([0, 1])), "a.npz")
    assert r.status_code == 201, r.text
    assert state(session) == (
        1,
        [f"datasets/{r.json()['id']}/x.npy", f"datasets/{r.json()['id']}/y.npy"],
    )
    assert client.delete(f"/datasets/{r.json()['id']}").status_code == 204
    assert state(session) == (0, [])
    assert list((Path(settings.data_dir) / "datasets").iterdir()) == []


# --- .zip of class folders -----------------------------------------------------------------------


def test_zip_of_class_folders_matches_the_images(client: TestClient) -> None:
    content, images, labels = digits_zip(60)
    r = upload(client, content, "digits.zip")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["kind"], body["rows"]) == ("images", 60)
    assert [c["name"] for c in body["columns"]] == ["image", "label"]
    profile = body["images"]
    assert profile["shape"] == [1, 8, 8] and profile["dtype"] == "uint8"
    assert profile["ignored_files"] == 2  # README.txt and the __MACOSX entry
    counts = {str(k): int((labels == k).sum()) for k in np.unique(labels)}
    assert {c["value"]: c["count"] for c in profile["classes"]} == counts
    assert len(profile["thumbnails"]) == 4
    x, y = service.load_images(_row(body["id"]))
    # Images are ordered by class folder, then file name.
    order = sorted(range(60), key=lambda i: (str(labels[i]), f"img{i:03d}.png"))
    np.testing.assert_array_equal(x[:, 0], images[order])
    assert list(y) == [str(labels[i]) for i in order]


def test_zip_resized_to_image_size_in_rgb(client: TestClient) -> None:
    rng = np.random.default_rng(2)
    members = {
        "a/1.png": png(rng.integers(0, 256, (10, 12), dtype=np.uint8)),
        "a/2.jpg": png(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8), "JPEG"),
        "b/3.jpeg": png(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8), "JPEG"),
    }
    r = upload(client, zip_of(members), "mixed.zip", image_size="6,4", color_mode="rgb")
    assert r.status_code == 201, r.text
    assert r.json()["images"]["shape"] == [3, 6, 4]
    x, y = service.load_images(_row(r.json()["id"]))
    assert x.shape == (3, 3, 6, 4) and list(y) == ["a", "a", "b"]


def test_zip_of_grayscale_images_as_rgb_repeats_the_channel(client: TestClient) -> None:
    img = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    r = upload(
        client, zip_of({"a/1.png": png(img), "b/2.png": png(img)}), "g.zip", color_mode="rgb"
    )
    assert r.status_code == 201, r.text
    x, _ = service.load_images(_row(r.json()["id"]))
    for channel in range(3):
        np.testing.assert_array_equal(x[0, channel], img)


# --- hostile archives ----------------------------------------------------------------------------


def _object_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((2, 2, 2), np.uint8), y=np.array([{"a": 1}, None], dtype=object))
    return buf.getvalue()


def _unsafe_zip(name: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/ok.png", png(np.zeros((2, 2), np.uint8)))
        info = zipfile.ZipInfo(name)
        zf.writestr(info, png(np.zeros((2, 2), np.uint8)))
    return buf.getvalue()


GRAY = png(np.zeros((4, 4), np.uint8))
HOSTILE = [
    # (id, content, filename, form fields, status, code, fragments)
    ("object-y", _object_npz(), "o.npz", {}, 422, "object_array", ["'y'", "never unpickled"]),
    (
        "object-x",
        npz(x=np.array([None, 1], dtype=object), y=np.array([0, 1])),
        "o.npz",
        {},
        422,
        "object_array",
        ["'x'"],
    ),
    (
        "length-mismatch",
        npz(x=np.zeros((3, 2, 2), np.uint8), y=np.array([0, 1])),
        "m.npz",
        {},
        422,
        "length_mismatch",
        ["3 images", "2 labels"],
    ),
    ("missing-y", npz(x=np.zeros((3, 2, 2), np.uint8)), "m.npz", {}, 422, "missing_array", ["'y'"]),
    ("missing-x", npz(y=np.array([0])), "m.npz", {}, 422, "missing_array", ["'x'"]),
    (
        "channels-last",
        npz(x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, 1])),
        "c.npz",
        {},
        422,
        "invalid_shape",
        ["channels-last"],
    ),
    (
        "int32-pixels",
        npz(x=np.zeros((2, 2, 2), np.int32), y=np.array([0, 1])),
        "i.npz",
        {},
        422,
        "invalid_dtype",
        ["uint8 or float"],
    ),
    (
        "nan-pixels",
        npz(x=np.full((2, 2, 2), np.nan), y=np.array([0, 1])),
        "n.npz",
        {},
        422,
        "non_finite",
        ["image 0"],
    ),
    (
        "float-labels",
        npz(x=np.zeros((2, 2, 2), np.uint8), y=np.array([0.5, 1.0])),
        "f.npz",
        {},
        422,
        "invalid_labels",
        [],
    ),
    ("truncated-zip", zip_of({"a/1.png": GRAY})[:-30], "t.zip", {}, 422, "invalid_archive", []),
    (
        "corrupt-image",
        zip_of({"a/1.png": GRAY, "b/2.png": b"\x89PNG\r\n\x1a\nbroken"}),
        "c.zip",
        {},
        422,
        "corrupt_image",
        ["'b/2.png'"],
    ),
    (
        "mixed-sizes",
        zip_of({"a/1.png": GRAY, "b/2.png": png(np.zeros((5, 4), np.uint8))}),
        "s.zip",
        {},
        422,
        "mixed_sizes",
        ["image_size", "4x5"],
    ),
    ("dot-dot", _unsafe_zip("../evil.png"), "u.zip", {}, 422, "unsafe_path", ["'..'"]),
    ("dot-dot-inside", _unsafe_zip("a/../../evil.png"), "u.zip", {}, 422, "unsafe_path", []),
    ("absolute", _unsafe_zip("/etc/evil.png"), "u.zip", {}, 422, "unsafe_path", ["absolute"]),
    ("no-images", zip_of({"notes.txt": b"hello"}), "n.zip", {}, 422, "no_images", []),
    (
        "outside-class-folder",
        zip_of({"1.png": GRAY, "a/2.png": GRAY}),
        "o.zip",
        {},
        422,
        "no_class_folder",
        ["'1.png'"],
    ),
    (
        "bad-image-size",
        zip_of({"a/1.png": GRAY}),
        "b.zip",
        {"image_size": "28"},
        422,
        "invalid_image_size",
        [],
    ),
    (
        "bad-color-mode",
        zip_of({"a/1.png": GRAY}),
        "b.zip",
        {"color_mode": "cmyk"},
        422,
        "invalid_color_mode",
        [],
    ),
]


@pytest.mark.parametrize(
    ("content", "filename", "fields", "status", "code", "fragments"),
    [pytest.param(c, f, d, s, k, g, id=i) for i, c, f, d, s, k, g in HOSTILE],
)
def test_hostile_image_upload_is_refused_and_leaves_nothing(
    client: TestClient,
    session: Session,
    content: bytes,
    filename: str,
    fields: dict[str, str],
    status: int,
    code: str,
    fragments: list[str],
) -> None:
    r = upload(client, content, filename, **fields)
    assert r.status_code == status, r.text
    error = r.json()["detail"][0]
    assert error["type"] == code, error
    for fragment in fragments:
        assert fragment in error["msg"], error["msg"]
    assert state(session) == (0, [])


def test_many_corrupt_images_are_listed_up_to_the_cap(client: TestClient, session: Session) -> None:
    members = {f"a/{i:03d}.png": b"not a png" for i in range(MAX_ERRORS + 10)}
    r = upload(client, zip_of(members), "bad.zip")
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert len(detail) == MAX_ERRORS + 1
    assert {e["type"] for e in detail[:-1]} == {"corrupt_image"}
    assert detail[-1]["type"] == "too_many_errors" and "10 more" in detail[-1]["msg"]
    assert state(session) == (0, [])


def test_zip_bomb_is_refused_by_declared_size(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "max_upload_mb", 1)
    bomb = zip_of({"a/1.png": GRAY, "a/zeros.png": b"\0" * (3 * 1024 * 1024)})
    assert len(bomb) < 64 * 1024
    r = upload(client, bomb, "bomb.zip")
    assert r.status_code == 413, r.text
    assert r.json()["detail"][0]["type"] == "archive_too_large"
    assert state(session) == (0, [])


def test_zip_bomb_that_lies_about_its_size_is_refused(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers claiming 100 bytes for a member that inflates to 3 MB: refused while inflating."""
    monkeypatch.setattr(settings, "max_upload_mb", 1)
    bomb = bytearray(zip_of({"a/zeros.png": b"\0" * (3 * 1024 * 1024)}))
    real = (3 * 1024 * 1024).to_bytes(4, "little")
    lie = (100).to_bytes(4, "little")
    assert bomb.count(real) == 2  # local header and central directory
    bomb = bomb.replace(real, lie)
    r = upload(client, bytes(bomb), "bomb.zip")
    assert r.status_code in (413, 422), r.text
    assert r.json()["detail"][0]["type"] in (
        "archive_too_large",
        "invalid_archive",
        "corrupt_image",
    )
    assert state(session) == (0, [])


def test_image_over_the_pixel_limit_is_refused(
    client: TestClient, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "max_image_pixels", 100)
    r = upload(client, zip_of({"a/1.png": png(np.zeros((20, 20), np.uint8))}), "big.zip")
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "image_too_large"
    assert state(session) == (0, [])
