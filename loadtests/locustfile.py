"""Locust shopper journey against the Agora API, with an SLO gate.

Each simulated shopper fetches a page of products and opens an anonymous cart
(keeping its ``X-Cart-Token``), then, 0.5 to 2 s apart, browses a category (sometimes
following ``next_cursor``), views products, adds to the cart, views the cart, changes
a line's quantity and removes lines. Requests carry stable names
(``/v1/products/[sku]``, ``/v1/cart/items/[sku]``, ...) so that statistics group by
route, not by SKU. A shopper keeps its cart under 40 lines and each line under 10,
well inside the API's 50-lines and 99-per-line limits, and starts a new cart when it
gets near them.

Run headless from the repository root::

    .venv/bin/locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 1m \\
        --host http://127.0.0.1:8000

SLO gate: when Locust quits, the run fails (exit status 1, with the reason printed)
if the aggregate p95 response time is above ``SLO_P95_MS`` or the failure ratio is
above ``SLO_MAX_FAILURE_RATIO``, or if no request was made at all.
"""

from __future__ import annotations

import random
from typing import Any

from locust import HttpUser, between, events, task
from locust.runners import WorkerRunner

SLO_P95_MS = 100.0
SLO_MAX_FAILURE_RATIO = 0.01
MAX_CART_LINES = 40
MAX_LINE_QUANTITY = 10
MAX_KNOWN_SKUS = 500


class Shopper(HttpUser):
    """An anonymous shopper browsing the catalog and filling a cart."""

    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self.skus: list[str] = []
        self.categories: list[str] = []
        self.cart_token: str | None = None
        self.cart: dict[str, int] = {}
        with self.client.get(
            "/v1/products?limit=50", name="/v1/products", catch_response=True
        ) as resp:
            if resp.status_code == 200:
                data = resp.json()
                self._remember(data.get("items", []))
                self.categories = sorted((data.get("facets") or {}).get("category") or {})
            else:
                resp.failure(f"catalog page answered {resp.status_code}")
        self._new_cart()

    def _remember(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            sku = item.get("sku")
            if sku and sku not in self.skus:
                self.skus.append(sku)
        del self.skus[:-MAX_KNOWN_SKUS]

    def _cart_headers(self) -> dict[str, str]:
        return {"X-Cart-Token": self.cart_token} if self.cart_token else {}

    def _track_cart(self, resp: Any) -> None:
        """Take the token and lines the API answered with as the shopper's cart."""
        token = resp.headers.get("X-Cart-Token")
        if token:
            self.cart_token = token
        try:
            lines = resp.json().get("lines", [])
        except ValueError:
            return
        self.cart = {line["sku"]: line["quantity"] for line in lines}

    def _new_cart(self) -> None:
        self.cart_token = None
        self.cart = {}
        with self.client.get("/v1/cart", name="/v1/cart", catch_response=True) as resp:
            if resp.status_code == 200:
                self._track_cart(resp)
                if not self.cart_token:
                    resp.failure("no cart token in the answer")
            else:
                resp.failure(f"answered {resp.status_code}")

    @task(4)
    def browse(self) -> None:
        params: dict[str, Any] = {"limit": 20}
        if self.categories:
            params["category"] = random.choice(self.categories)
        resp = self.client.get("/v1/products", params=params, name="/v1/products?category=[c]")
        if not resp.ok:
            return
        data = resp.json()
        self._remember(data.get("items", []))
        cursor = data.get("next_cursor")
        if cursor and random.random() < 0.3:
            params["cursor"] = cursor
            resp = self.client.get(
                "/v1/products", params=params, name="/v1/products?category=[c]&cursor=[cursor]"
            )
            if resp.ok:
                self._remember(resp.json().get("items", []))

    @task(5)
    def view_product(self) -> None:
        if self.skus:
            self.client.get(f"/v1/products/{random.choice(self.skus)}", name="/v1/products/[sku]")

    @task(3)
    def add_to_cart(self) -> None:
        if not self.skus:
            return
        if self.cart_token is None or len(self.cart) >= MAX_CART_LINES:
            self._new_cart()
            if self.cart_token is None:
                return
        sku = random.choice(self.skus)
        if self.cart.get(sku, 0) >= MAX_LINE_QUANTITY:
            return
        resp = self.client.post(
            "/v1/cart/items",
            json={"sku": sku, "quantity": 1},
            headers=self._cart_headers(),
            name="/v1/cart/items",
        )
        if resp.ok:
            self._track_cart(resp)

    @task(2)
    def view_cart(self) -> None:
        if self.cart_token is None:
            self._new_cart()
            return
        resp = self.client.get("/v1/cart", headers=self._cart_headers(), name="/v1/cart")
        if resp.ok:
            self._track_cart(resp)

    @task(1)
    def change_quantity(self) -> None:
        if not self.cart:
            self.add_to_cart()
            return
        sku = random.choice(list(self.cart))
        resp = self.client.patch(
            f"/v1/cart/items/{sku}",
            json={"quantity": random.randint(1, MAX_LINE_QUANTITY)},
            headers=self._cart_headers(),
            name="/v1/cart/items/[sku]",
        )
        if resp.ok:
            self._track_cart(resp)

    @task(1)
    def remove_item(self) -> None:
        if not self.cart:
            self.add_to_cart()
            return
        sku = random.choice(list(self.cart))
        resp = self.client.delete(
            f"/v1/cart/items/{sku}", headers=self._cart_headers(), name="/v1/cart/items/[sku]"
        )
        if resp.ok:
            self._track_cart(resp)


@events.quitting.add_listener
def slo_gate(environment: Any, **_kwargs: Any) -> None:
    """Fail the run when the aggregate p95 or failure ratio breaks the SLO."""
    if isinstance(environment.runner, WorkerRunner):
        return
    total = environment.stats.total
    p95 = total.get_response_time_percentile(0.95) or 0.0
    failure_ratio = total.fail_ratio
    reasons = []
    if total.num_requests == 0:
        reasons.append("no requests were made")
    if p95 > SLO_P95_MS:
        reasons.append(f"p95 {p95:.0f} ms > {SLO_P95_MS:.0f} ms")
    if failure_ratio > SLO_MAX_FAILURE_RATIO:
        reasons.append(f"failure ratio {failure_ratio:.2%} > {SLO_MAX_FAILURE_RATIO:.0%}")
    if reasons:
        print("SLO gate FAILED: " + "; ".join(reasons))
        environment.process_exit_code = 1
    else:
        print(
            f"SLO gate passed: p95 {p95:.0f} ms <= {SLO_P95_MS:.0f} ms, "
            f"failure ratio {failure_ratio:.2%} <= {SLO_MAX_FAILURE_RATIO:.0%} "
            f"over {total.num_requests} requests"
        )
