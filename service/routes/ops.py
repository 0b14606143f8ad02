from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..dependencies import ServicesDep

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep):
    """Redis reachable, catalog loaded, engine running, warm-up recommendations done."""
    checks = await services.checks()
    if all(checks.values()):
        return {"ready": True, "checks": checks}
    return JSONResponse({"ready": False, "checks": checks}, 503,
                        headers={"Retry-After": str(services.settings.retry_after_s)})


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
