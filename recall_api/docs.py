"""``GET /docs`` served offline: Swagger UI from the ``swagger-ui-bundle-v2`` package instead of a CDN.

FastAPI's default ``/docs`` page loads Swagger UI's JavaScript and CSS from a CDN, so it is blank without a
network.  :func:`install_docs` serves the same page with the assets from the installed package under
``/static/swagger`` (Swagger UI 5: FastAPI's OpenAPI 3.1 schema needs it).  ReDoc (``/redoc``), which has no
packaged copy here, is not served.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles

SWAGGER_PREFIX = "/static/swagger"


def swagger_dir() -> str:
    """The directory of the packaged Swagger UI assets."""
    import swagger_ui_bundle

    return swagger_ui_bundle.swagger_ui_path


def install_docs(app: FastAPI, docs_url: str = "/docs") -> None:
    """Serve Swagger UI at ``docs_url`` with local assets (create the app with ``docs_url=None``)."""
    app.mount(SWAGGER_PREFIX, StaticFiles(directory=swagger_dir()), name="swagger-ui")
    redirect = f"{docs_url}/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API docs",
                                   swagger_js_url=f"{SWAGGER_PREFIX}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{SWAGGER_PREFIX}/swagger-ui.css",
                                   swagger_favicon_url=f"{SWAGGER_PREFIX}/favicon-32x32.png",
                                   oauth2_redirect_url=redirect)

    @app.get(redirect, include_in_schema=False)
    async def swagger_ui_redirect():
        return get_swagger_ui_oauth2_redirect_html()
