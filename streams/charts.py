"""Charts of the analytics reports, rendered server-side (matplotlib, no pyplot).

``render`` draws a report's JSON (``streams.reports``) as PNG or SVG bytes. A
``Figure`` is made per call and never registered with pyplot (no GUI backend,
the Agg renderer draws it), so concurrent renders in threads share no global
state; files carry no creation date.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

FORMATS = {"png": "image/png", "svg": "image/svg+xml"}
_COLOR = "#2f6db5"


def _units(money: dict[str, Any]) -> float:
    return float(money["amount"]) / 100


def _sales(ax: Axes, data: dict[str, Any]) -> str:
    days = [r["day"][5:] for r in data["by_day"]]
    ax.bar(days, [_units(r["net"]) for r in data["by_day"]], color=_COLOR, label="net")
    ax.plot(days, [_units(r["gross"]) for r in data["by_day"]], color="#b5402f", label="gross")
    ax.set_ylabel(data["totals"]["net"]["currency"])
    ax.legend(loc="upper left")
    _thin_ticks(ax, len(days))
    totals = data["totals"]
    return f"Sales: {totals['orders']} orders, net {_units(totals['net']):,.2f}"


def _funnel(ax: Axes, data: dict[str, Any]) -> str:
    stages = data["stages"][::-1]
    ax.barh([s["stage"] for s in stages], [s["visitors"] for s in stages], color=_COLOR)
    for i, s in enumerate(stages):
        rate = s["from_first"]
        ax.annotate(
            f"{s['visitors']}" + ("" if rate is None else f" ({rate:.1%})"),
            (s["visitors"], i),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
        )
    ax.set_xlabel("visitors")
    return "Funnel: view -> cart -> checkout -> paid"


def _rfm(ax: Axes, data: dict[str, Any]) -> str:
    segments = data["segments"]
    ax.bar([s["segment"] for s in segments], [s["customers"] for s in segments], color=_COLOR)
    ax.set_ylabel("customers")
    ax.tick_params(axis="x", labelrotation=30)
    return f"RFM segments ({data['customers']} customers)"


def _cohorts(ax: Axes, data: dict[str, Any]) -> str:
    rows = data["cohorts"]
    width = max((len(r["retention"]) for r in rows), default=1)
    grid = [r["retention"] + [float("nan")] * (width - len(r["retention"])) for r in rows]
    if grid:
        image = ax.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.figure.colorbar(image, ax=ax, label="retention")
    ax.set_yticks(range(len(rows)), [r["cohort"] for r in rows])
    ax.set_xlabel("months since first order")
    return "Monthly cohorts: retention"


def _top_products(ax: Axes, data: dict[str, Any]) -> str:
    products = data["products"][::-1]
    ax.barh([p["sku"] for p in products], [_units(p["revenue"]) for p in products], color=_COLOR)
    ax.set_xlabel("net revenue")
    return "Top products"


def _stockouts(ax: Axes, data: dict[str, Any]) -> str:
    skus = data["skus"][::-1]
    ax.barh([s["sku"] for s in skus], [s["hours_out"] for s in skus], color="#b5402f")
    ax.set_xlabel("hours out of stock")
    return "Stock-outs"


_DRAW: dict[str, Callable[[Axes, dict[str, Any]], str]] = {
    "sales": _sales,
    "funnel": _funnel,
    "rfm": _rfm,
    "cohorts": _cohorts,
    "top-products": _top_products,
    "stockouts": _stockouts,
}


def _thin_ticks(ax: Axes, count: int, most: int = 15) -> None:
    step = max(1, -(-count // most))
    for i, label in enumerate(ax.get_xticklabels()):
        label.set_visible(i % step == 0)
    ax.tick_params(axis="x", labelrotation=45)


def render(data: dict[str, Any], fmt: str) -> bytes:
    """The chart of a computed report (``data["report"]`` names it) as ``fmt`` bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown chart format {fmt!r}")
    figure = Figure(figsize=(9, 5), dpi=100, layout="tight")
    ax = figure.add_subplot()
    title = _DRAW[data["report"]](ax, data)
    ax.set_title(f"{title}\n{data['from']} .. {data['to']}", fontsize=11)
    out = io.BytesIO()
    metadata: dict[str, Any] = {"Software": None} if fmt == "png" else {"Date": None}
    figure.savefig(out, format=fmt, metadata=metadata)
    return out.getvalue()
