"""GET /stats: calls and response times per API route, summed over every Errands process."""

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from errands.core.openapi import answer
from errands.core.resources import Resources, get_resources
from errands.stats.histogram import percentile_ms
from errands.stats.recorder import StatsRecorder
from errands.stats.store import RouteTotals, read_totals, started_at

__all__ = ["RouteStats", "StatsResponse", "router"]

router = APIRouter(tags=["stats"])


class RouteStats(BaseModel):
    method: str
    route: str = Field(description="The route's template, e.g. /timer/{id}.")
    count: int
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int = Field(description="Answers with status 400 or above.")


class StatsResponse(BaseModel):
    started_at: datetime = Field(description="When this database began counting.")
    since_start: list[RouteStats]
    last_hour: list[RouteStats]


@router.get(
    "/stats",
    summary="Calls and response times per route",
    responses={
        200: answer(
            {
                "started_at": "2026-11-30T09:12:44Z",
                "since_start": [
                    {
                        "method": "POST",
                        "route": "/titles",
                        "count": 1520,
                        "avg_ms": 412.5,
                        "p50_ms": 380.0,
                        "p95_ms": 910.0,
                        "p99_ms": 1480.0,
                        "errors": 12,
                    }
                ],
                "last_hour": [],
            }
        )
    },
)
async def get_stats(
    request: Request, resources: Annotated[Resources, Depends(get_resources)]
) -> StatsResponse:
    """How often each API route was called and how fast it answered, over every process
    sharing this database: since counting began, and over the last hour.

    Other processes' latest few seconds may not be included yet (each adds its counts every
    ERRANDS_STATS_FLUSH_INTERVAL_S); this process's are. Percentiles are within about 5%.
    """
    recorder: StatsRecorder = request.app.state.stats_recorder
    await recorder.flush(resources.pool)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    async with resources.pool.connection() as conn:
        began = await started_at(conn)
        since_start = await read_totals(conn, None)
        last_hour = await read_totals(conn, hour_ago)
    return StatsResponse(
        started_at=began,
        since_start=[_route_stats(totals) for totals in since_start],
        last_hour=[_route_stats(totals) for totals in last_hour],
    )


def _route_stats(totals: RouteTotals) -> RouteStats:
    def percentile(quantile: float) -> float:
        return percentile_ms(totals.histogram, quantile) or 0.0

    return RouteStats(
        method=totals.method,
        route=totals.route,
        count=totals.count,
        avg_ms=round(totals.sum_ms / totals.count, 2) if totals.count else 0.0,
        p50_ms=percentile(0.5),
        p95_ms=percentile(0.95),
        p99_ms=percentile(0.99),
        errors=totals.errors,
    )
