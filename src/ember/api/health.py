"""What a supervisor or a monitor asks: is it ready (/health), and what is it doing (/metrics, Prometheus format)."""

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ember import __version__
from ember.api import common
from ember.ops.metrics import CONTENT_TYPE

router = APIRouter()


@router.api_route("/health", methods=["GET", "HEAD"], responses={503: {"description": "Starting or draining"}})
async def health(request: Request):
    """200 when ready to serve; 503 while starting or draining (after SIGTERM), so a balancer sends no more."""
    runtime = common.runtime(request)
    status = "ok" if runtime.ready else ("draining" if runtime.draining else "starting")
    return JSONResponse({"status": status, "version": __version__}, status_code=200 if runtime.ready else 503)


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text format", "content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request):
    return Response(common.runtime(request).metrics.render(), media_type=CONTENT_TYPE)
