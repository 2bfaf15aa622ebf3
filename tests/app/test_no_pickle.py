"""No pickle anywhere data or models are loaded.

Unpickling runs arbitrary code, so a model uploaded, exported or stored by someone else must never
be read with it. Two checks: the source of app/ and engine/ never reaches for a pickle-capable
loader, and ``engine.load`` refuses an npz whose arrays would need pickle to read (an object
array), without ever running the payload.
"""

import ast
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("app", "engine")

# Modules whose load functions execute code from the bytes they read.
PICKLE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "shelve",
    "marshal",
}
# Loader names that unpickle (pandas.read_pickle, torch.load default, numpy.lib.format with pickle).
PICKLE_CALLS = {"read_pickle", "loads", "load", "Unpickler"}


def _python_files() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    assert files, "no source files found: the test would pass vacuously"
    return files


def _pickle_uses(path: Path, root: Path = ROOT) -> list[str]:
    """Each place in ``path`` that imports a pickle module, calls its loaders or allows pickle."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    where = f"{path.relative_to(root)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    found.append(f"{where}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in PICKLE_MODULES:
                found.append(f"{where}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "read_pickle":
                found.append(f"{where}:{node.lineno}: .read_pickle(...)")
            if (
                isinstance(func, ast.Attribute)
                and func.attr in PICKLE_CALLS
                and isinstance(func.value, ast.Name)
                and func.value.id in PICKLE_MODULES | {"torch"}
            ):
                found.append(f"{where}:{node.lineno}: {func.value.id}.{func.attr}(...)")
            for keyword in node.keywords:
                # allow_pickle must be absent (numpy's default is False) or the literal False.
                if keyword.arg == "allow_pickle" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                ):
                    found.append(
                        f"{where}:{node.lineno}: allow_pickle={ast.unparse(keyword.value)}"
                    )
    return found


def test_source_never_uses_pickle_loaders() -> None:
    found = [hit for path in _python_files() for hit in _pickle_uses(path)]
    assert found == [], "pickle-capable loading found:\n" + "\n".join(found)


def test_scanner_catches_what_it_looks_for(tmp_path: Path) -> None:
    # Guards the guard: the AST scan must flag each pattern, or the test above proves nothing.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\n"
        "from joblib import load\n"
        "import numpy as np\n"
        "flag = True\n"
        "np.load('x.npz', allow_pickle=True)\n"
        "np.load('x.npz', allow_pickle=flag)\n"
        "pickle.loads(b'')\n"
        "import pandas as pd\n"
        "pd.read_pickle('x')\n"
        "np.load('x.npz', allow_pickle=False)\n"
    )
    hits = _pickle_uses(bad, root=tmp_path)
    assert len(hits) == 6, hits


class _Payload:
    """Unpickling this object creates a marker file: proof that a loader ran pickle."""

    marker: Path

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def _small_model():
    import engine

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    spec = {"loss": "softmax_cross_entropy", "model": {"hidden_layers": []}, "epochs": 2}
    return engine.fit(spec, X, y)


def _replace_member(data: bytes, name: str, array: np.ndarray) -> bytes:
    """The npz ``data`` with member ``name`` replaced by ``array`` saved with pickle."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as src,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            if info.filename == name:
                buffer = io.BytesIO()
                np.save(buffer, array, allow_pickle=True)
                dst.writestr(info.filename, buffer.getvalue())
            else:
                dst.writestr(info, src.read(info.filename))
    return out.getvalue()


def test_engine_load_rejects_object_array_without_running_it(tmp_path: Path) -> None:
    import engine

    model = _small_model()
    data = model.to_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [n for n in archive.namelist() if n.endswith(".npy")]
    assert members, "engine's model bytes are expected to be an npz with .npy members"
    # Sanity: the untouched bytes load and predict identically.
    X = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_array_equal(engine.load(data).predict(X), model.predict(X))

    _Payload.marker = tmp_path / "pwned"
    poisoned = np.empty(1, dtype=object)
    poisoned[0] = _Payload()
    for member in members:
        bad = _replace_member(data, member, poisoned)
        with pytest.raises(ValueError) as info:
            engine.load(bad)
        # engine.ModelFormatError is the documented error; a bare numpy ValueError means the
        # engine let numpy's refusal escape without its own message.
        assert isinstance(info.value, engine.ModelFormatError), (member, repr(info.value))
        assert not _Payload.marker.exists(), f"unpickling ran while loading {member}"


def test_engine_load_rejects_a_plain_pickle(tmp_path: Path) -> None:
    import pickle

    import engine

    _Payload.marker = tmp_path / "pwned"
    with pytest.raises(engine.ModelFormatError):
        engine.load(pickle.dumps(_Payload()))
    assert not _Payload.marker.exists()
