"""The dashboard, /docs and /redoc are served from files in the package, never from another host.

These tests mount app.web on a bare FastAPI app (no database, no executor), so they check the
web layer alone: what the pages reference, that those files are served with the right types,
and that the vendored packages ship with their licences.
"""

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.web import REDOC, STATIC_DIR, SWAGGER_UI, mount

VENDOR = STATIC_DIR / "vendor"
OWN_SUFFIXES = {".html", ".js", ".css", ".svg"}
# Words that mean "fetched from elsewhere" in our own files.
REMOTE = re.compile(r"https?://|//cdn|\bcdn\.|unpkg|jsdelivr|googleapis|cdnjs", re.IGNORECASE)
# XML namespaces are names, not downloads.
NAMESPACE = re.compile(r'xmlns(:\w+)?="http://www\.w3\.org/[^"]*"')


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """A bare app built the way the app factory builds it: FastAPI's CDN docs off, app.web on."""
    app = FastAPI(title="Regula", docs_url=None, redoc_url=None)

    @app.get("/datasets")
    def datasets() -> list[dict]:
        return []

    mount(app)
    with TestClient(app) as c:
        yield c


class _Refs(HTMLParser):
    """Collects every src/href of an HTML page and the text of its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def _refs(html: str) -> _Refs:
    parser = _Refs()
    parser.feed(html)
    return parser


def _local_asset_refs(page_url: str, html: str) -> list[str]:
    """The page's asset URLs resolved against it; fails on any URL with a host."""
    found = _refs(html)
    urls = [r for r in found.refs if not r.startswith("#")]
    # Swagger UI's page passes its spec URL in an inline script: url: '/openapi.json'.
    urls += re.findall(r"""url:\s*['"]([^'"]+)['"]""", "".join(found.scripts))
    for ref in urls:
        assert not urlsplit(ref).netloc, f"{page_url} references another host: {ref}"
        assert not urlsplit(ref).scheme, f"{page_url} references a URL with a scheme: {ref}"
    return [urljoin(page_url, r) for r in urls]


def _strip_comments(text: str, suffix: str) -> str:
    """Our own files without their comments (a comment may cite a documentation URL)."""
    if suffix in (".html", ".svg"):
        text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
        text = NAMESPACE.sub("", text)
    if suffix in (".js", ".css"):
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    if suffix == ".js":
        text = re.sub(r"(^|\s)//[^\n]*", r"\1", text)
    return text


def _own_files() -> list[Path]:
    return sorted(
        p
        for p in STATIC_DIR.rglob("*")
        if p.is_file() and p.suffix in OWN_SUFFIXES and VENDOR not in p.parents
    )


def test_dashboard_is_served_at_root(client: TestClient) -> None:
    res = client.get("/")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/html")
    assert 'id="app"' in res.text
    assert 'type="module"' in res.text


def test_dashboard_assets_are_local_and_served(client: TestClient) -> None:
    html = client.get("/").text
    urls = _local_asset_refs("http://testserver/", html)
    assets = [u for u in urls if "/static/" in u]
    assert any(u.endswith("/static/js/main.js") for u in assets)
    assert any(u.endswith("uPlot.min.css") for u in assets)
    for asset in assets:
        res = client.get(asset)
        assert res.status_code == 200, asset


def test_dashboard_modules_import_only_local_files(client: TestClient) -> None:
    """Every ES module reachable from main.js is served, and each import is a relative path."""
    seen: set[str] = set()
    todo = ["http://testserver/static/js/main.js"]
    pattern = re.compile(r"""^\s*(?:import|export)\b[^'"]*?from\s*['"]([^'"]+)['"]""", re.MULTILINE)
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        res = client.get(url)
        assert res.status_code == 200, url
        assert "javascript" in res.headers["content-type"], url
        for spec in pattern.findall(res.text):
            assert spec.startswith("."), f"{url} imports {spec}, not a relative file"
            todo.append(urljoin(url, spec))
    names = {u.rsplit("/", 1)[-1] for u in seen}
    assert {"main.js", "api.js", "charts.js", "uPlot.esm.js", "model.js", "job.js"} <= names


def test_own_static_files_name_no_other_host() -> None:
    files = _own_files()
    assert len(files) >= 10, files
    for path in files:
        code = _strip_comments(path.read_text(encoding="utf-8"), path.suffix)
        hit = REMOTE.search(code)
        where = path.relative_to(STATIC_DIR)
        assert hit is None, f"{where} names a remote URL near {hit.group()!r}"


def test_docs_page_uses_vendored_swagger_ui(client: TestClient) -> None:
    res = client.get("/docs")
    assert res.status_code == 200
    urls = _local_asset_refs("http://testserver/docs", res.text)
    paths = {urlsplit(u).path for u in urls}
    assert f"/static/{SWAGGER_UI}/swagger-ui-bundle.js" in paths
    assert f"/static/{SWAGGER_UI}/swagger-ui.css" in paths
    assert "/openapi.json" in paths
    # The online validator badge would be an image from validator.swagger.io.
    assert '"validatorUrl": null' in res.text


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("swagger-ui-bundle.js", "javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon-32x32.png", "image/png"),
    ],
)
def test_swagger_ui_assets_are_served(client: TestClient, name: str, content_type: str) -> None:
    res = client.get(f"/static/{SWAGGER_UI}/{name}")
    assert res.status_code == 200
    assert content_type in res.headers["content-type"]
    assert res.content == (STATIC_DIR / SWAGGER_UI / name).read_bytes()
    assert len(res.content) > 500


def test_swagger_oauth2_redirect_page(client: TestClient) -> None:
    res = client.get("/docs/oauth2-redirect")
    assert res.status_code == 200
    assert "oauth2" in res.text.lower()
    assert not any(urlsplit(r).netloc for r in _refs(res.text).refs)


def test_redoc_page_uses_vendored_redoc(client: TestClient) -> None:
    res = client.get("/redoc")
    assert res.status_code == 200
    urls = _local_asset_refs("http://testserver/redoc", res.text)
    paths = {urlsplit(u).path for u in urls}
    assert f"/static/{REDOC}/redoc.standalone.js" in paths
    assert "fonts.googleapis" not in res.text
    assert 'spec-url="/openapi.json"' in res.text
    js = client.get(f"/static/{REDOC}/redoc.standalone.js")
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]
    assert len(js.content) > 100_000


def test_docs_pages_stay_out_of_the_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/datasets"}


def test_docs_pages_follow_root_path() -> None:
    """Behind a proxy prefix the pages load assets and the schema under that prefix."""
    app = FastAPI(docs_url=None, redoc_url=None)
    mount(app)
    with TestClient(app, root_path="/regula") as c:
        docs = c.get("/docs").text
        redoc = c.get("/redoc").text
    assert f"/regula/static/{SWAGGER_UI}/swagger-ui-bundle.js" in docs
    assert "'/regula/openapi.json'" in docs
    assert f"/regula/static/{REDOC}/redoc.standalone.js" in redoc


def test_vendored_packages_ship_their_licences() -> None:
    versions = (VENDOR / "VERSIONS.md").read_text(encoding="utf-8")
    folders = sorted(p for p in VENDOR.iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["redoc-2.5.4", "swagger-ui-dist-5.35.0", "uplot-1.6.32"]
    for folder in folders:
        licence = (folder / "LICENSE").read_text(encoding="utf-8")
        assert "Permission is hereby granted" in licence or "Apache License" in licence
        name, _, version = folder.name.rpartition("-")
        assert f"| {name} | {version} |" in versions
        for file in folder.iterdir():
            # Each vendored file is listed with its checksum.
            assert f"{folder.name}/{file.name}" in versions, file


def test_vendored_files_are_unchanged() -> None:
    """The checksums in VERSIONS.md match the files (they are copies of the npm tarballs)."""
    import hashlib

    text = (VENDOR / "VERSIONS.md").read_text(encoding="utf-8")
    sums = re.findall(r"^([0-9a-f]{64})  (\S+)$", text, flags=re.MULTILINE)
    assert len(sums) >= 10
    for digest, rel in sums:
        assert hashlib.sha256((VENDOR / rel).read_bytes()).hexdigest() == digest, rel


@pytest.mark.parametrize("path", ["/", "/docs", "/redoc"])
def test_pages_forbid_other_hosts(client: TestClient, path: str) -> None:
    """A same-origin Content-Security-Policy: the browser never fetches from another host."""
    policy = client.get(path).headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    for name in ("img-src", "script-src", "connect-src", "style-src", "font-src"):
        sources = directives[name].split()
        assert "'self'" in sources
        assert set(sources) <= {"'self'", "'unsafe-inline'", "data:", "blob:"}, (name, sources)
    assert "'unsafe-inline'" not in directives["script-src"] or path == "/docs"
