"""Analytics reports for operators: ``GET /v1/admin/analytics/{report}``.

Thin: it validates the range and format and has ``streams.reports.run``
answer from the warehouse's daily rollups (``streams.warehouse``); charts come
from ``streams.charts``. ``load`` reads the raw rows instead, for the tests and
the benchmark that check the rollups against them. The work runs in a thread (polars and matplotlib
release the event loop). The warehouse is the directory or object store the
warehouse consumer writes (``AGORA_WAREHOUSE_URL``), read on every call.

No ``from __future__ import annotations``: FastAPI reads the annotations.
"""

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import polars as pl
from fastapi import APIRouter, Path, Query, Response

from serve.auth.principal import ADMIN, Admin
from serve.problems import Problem
from serve.runtime import runtime
from streams import charts, reports
from streams.events import PAYMENT_REFUNDED
from streams.reports import EVENT_COLUMNS
from streams.warehouse import EVENTS, ORDER_LINES, PAID_ORDERS, REFUND_COLUMNS, Warehouse

router = APIRouter(tags=["admin"])

DEFAULT_DAYS = 30
Format = Literal["json", "png", "svg"]


def report_range(start: date | None, end: date | None, max_days: int) -> tuple[date, date]:
    """``[from, to]``: ``to`` defaults to today (UTC), ``from`` to 30 days before it."""
    end = end or datetime.now(UTC).date()
    start = start or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise Problem(422, "validation", "'from' must not be after 'to'.")
    if (end - start).days + 1 > max_days:
        raise Problem(422, "validation", f"The range spans at most {max_days} days.")
    return start, end


def load(warehouse: Warehouse, name: str, start: date, end: date) -> reports.Frames:
    """The warehouse rows report ``name`` reads for ``[start, end]``, and only those."""
    report = reports.REPORTS[name]
    first = None if report.history else start

    def table(name: str, wanted: bool, **kw: Any) -> pl.DataFrame:
        return warehouse.scan(name, first, end, **kw) if wanted else reports.empty(name)

    return reports.Frames(
        events=table(
            EVENTS, bool(report.event_types), types=report.event_types, columns=EVENT_COLUMNS
        ),
        lines=table(ORDER_LINES, report.lines),
        orders=table(PAID_ORDERS, report.orders),
        refunds=warehouse.scan(
            EVENTS, first, end, types=[PAYMENT_REFUNDED.name], columns=REFUND_COLUMNS
        )
        if report.refunds
        else reports.no_refunds(),
    )


def _run(warehouse: Warehouse, name: str, start: date, end: date, limit: int, fmt: str) -> Any:
    data = reports.run(warehouse, name, start, end, limit)
    if fmt == "json":
        return data
    return charts.render(data, fmt)


@router.get(
    "/v1/admin/analytics/{report}",
    openapi_extra=ADMIN,
    responses={
        200: {
            "description": "the report as JSON, or its chart",
            "content": {"image/png": {}, "image/svg+xml": {}},
        },
        404: {"description": "no such report"},
    },
)
async def analytics_report(
    report: Annotated[str, Path(max_length=40)],
    _admin: Admin,
    start: Annotated[date | None, Query(alias="from")] = None,
    end: Annotated[date | None, Query(alias="to")] = None,
    format: Format = "json",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Any:
    """One report over the days ``from``..``to`` (ISO dates, inclusive; default the last
    30 days): ``sales`` (by day and category: gross, discounts, net, orders, AOV),
    ``funnel`` (view -> cart -> checkout -> paid), ``rfm`` (segments), ``cohorts``
    (monthly, with retention), ``top-products``, ``stockouts``. ``format=png`` or
    ``svg`` answers the chart instead of JSON; ``limit`` caps list reports."""
    name = reports.report_name(report)
    if name is None:
        known = ", ".join(sorted(reports.REPORTS))
        raise Problem(404, "not-found", f"No such report; the reports are: {known}.")
    rt = runtime()
    first, last = report_range(start, end, rt.settings.analytics_max_days)
    warehouse = Warehouse(rt.settings.warehouse_location)
    result = await asyncio.to_thread(_run, warehouse, name, first, last, limit, format)
    if format == "json":
        return result
    return Response(
        result, media_type=charts.FORMATS[format], headers={"Cache-Control": "private, no-store"}
    )
