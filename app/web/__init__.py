"""The dashboard and the API docs, served from files shipped in the package (no CDN, works offline).

``mount(app)`` adds, all outside the OpenAPI schema:

- ``GET /`` -> the dashboard (``static/index.html``: plain ES modules, uPlot for the charts);
- ``GET /docs`` and ``GET /docs/oauth2-redirect`` -> Swagger UI, ``GET /redoc`` -> ReDoc, both
  built with FastAPI's own page helpers (the "self-hosting JavaScript and CSS for docs" recipe)
  but pointed at the vendored copies under ``static/vendor/`` (versions in its VERSIONS.md);
- ``/static`` -> the files of ``static/``.

Create the app with ``docs_url=None, redoc_url=None`` so FastAPI does not add its CDN pages.
"""

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
SWAGGER_UI = "vendor/swagger-ui-dist-5.35.0"
REDOC = "vendor/redoc-2.5.4"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"


# The pages may load nothing from another host: the browser refuses (and never sends) such
# requests. ReDoc's sidebar, for one, shows a logo from its vendor's CDN, with no option to hide it.
_SAME_ORIGIN = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
    "base-uri 'self'; form-action 'self'"
)
CSP_DASHBOARD = f"{_SAME_ORIGIN}; script-src 'self'"
# Swagger UI's page starts it from an inline script.
CSP_SWAGGER_UI = f"{_SAME_ORIGIN}; script-src 'self' 'unsafe-inline'"
CSP_REDOC = f"{_SAME_ORIGIN}; script-src 'self'"


def _same_origin_only(response: HTMLResponse, policy: str) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = policy
    return response


def _prefix(request: Request) -> str:
    # Behind a proxy that strips a path prefix, every URL the pages load must carry it back.
    return request.scope.get("root_path", "").rstrip("/")


def mount(app: FastAPI) -> None:
    """Serve the dashboard at /, Swagger UI at /docs, ReDoc at /redoc and the assets at /static."""
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        """The dashboard (a static page that reads the API's own JSON and event stream)."""
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html",
            headers={"Content-Security-Policy": CSP_DASHBOARD},
        )

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        """Swagger UI from the vendored swagger-ui-dist."""
        root = _prefix(request)
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}/static/{SWAGGER_UI}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/static/{SWAGGER_UI}/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/{SWAGGER_UI}/favicon-32x32.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            # Swagger UI's default validator badge is an image fetched from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
        return _same_origin_only(page, CSP_SWAGGER_UI)

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        """The page Swagger UI's OAuth2 flow returns to."""
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        """ReDoc from the vendored standalone bundle, without Google Fonts."""
        root = _prefix(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}/static/{REDOC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}/static/favicon.svg",
            with_google_fonts=False,
        )
        return _same_origin_only(page, CSP_REDOC)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
