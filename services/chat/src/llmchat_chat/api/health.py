from fastapi import APIRouter, Request, Response

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request, response: Response) -> dict[str, bool]:
    service = getattr(request.app.state, "service", None)
    draining = getattr(request.app.state, "draining", False)
    ready = service is not None and service.nc.is_connected and not draining
    response.status_code = 200 if ready else 503
    return {"ready": ready}
