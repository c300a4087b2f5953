"""The OpenAPI schema and its Swagger UI and ReDoc pages, on whichever app serves the REST API.

NiceGUI builds its FastAPI app with the documentation switched off (``ui.run`` only turns it on
when asked), so the main port answered 404 where the README promises the docs. Who may read them
is the access table's business (``/docs``, ``/redoc``, ``/openapi.json``: manage).
"""

from __future__ import annotations

from fastapi import FastAPI


def install_api_docs(app: FastAPI) -> None:
    """Serve ``/openapi.json``, ``/docs`` and ``/redoc`` unless the app already does."""
    if app.openapi_url and app.docs_url and app.redoc_url:
        return
    # FastAPI.setup() adds a route for each URL it finds set; the ones it added before stay,
    # so only the missing URLs are set here and setup() runs on an app that lacks some of them.
    before = {getattr(r, "path", None) for r in app.router.routes}
    app.openapi_url = app.openapi_url or "/openapi.json"
    app.docs_url = app.docs_url or "/docs"
    app.redoc_url = app.redoc_url or "/redoc"
    routes = list(app.router.routes)
    app.setup()
    # Drop any duplicate setup() re-created for a URL that was already served.
    app.router.routes[:] = routes + [
        r for r in app.router.routes[len(routes) :] if getattr(r, "path", None) not in before
    ]
