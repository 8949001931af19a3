"""Admin listener (127.0.0.1:8002 by default). The operator API and /metrics are mounted here."""

from __future__ import annotations

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def build_admin_app() -> Starlette:
    async def healthz(request: Request) -> Response:
        return Response(orjson.dumps({"status": "ok"}), media_type="application/json")

    return Starlette(routes=[Route("/healthz", healthz, methods=["GET"])])
