"""The web app: the built single-page app's files, and its `index.html` for every page path the
app routes itself (`/c/<id>`, `/usage`, ...), so a reload lands on the same page. Hashed assets
are cached for good; `index.html` is revalidated, so a new build shows at the next load."""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

# Paths the API owns: an unknown one is the API's 404, never the app's page.
API_PREFIXES = ("/v1/", "/.well-known/", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz")
IMMUTABLE = "public, max-age=31536000, immutable"


class WebApp(StaticFiles):
    def __init__(self, directory: Path) -> None:
        self.index = directory / "index.html"
        # html: `/` (a directory) answers its index.html.
        super().__init__(directory=directory, html=True, check_dir=False)

    async def get_response(self, path: str, scope: Scope) -> Response:
        if is_api("/" + path):
            raise HTTPException(404)  # the API's JSON 404 (no route matched)
        if not self.index.is_file():
            return PlainTextResponse(
                "The web app is not built: run `make web` (make run and make test build it).", 404
            )
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404 or path.startswith("assets/") or "." in path.rsplit("/", 1)[-1]:
                raise
            response = FileResponse(self.index)
        if path.startswith("assets/") and response.status_code == 200:
            response.headers["Cache-Control"] = IMMUTABLE
        else:
            response.headers["Cache-Control"] = "no-cache"
        return response


def is_api(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path == "/v1"
