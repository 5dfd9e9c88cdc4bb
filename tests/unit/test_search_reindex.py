"""``agora search reindex`` follows the replica's rebuild through ``/metrics``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import generate_latest

from cluster import search_reindex
from serve.catalog_state import BUILD_CHUNK, _build_index
from serve.search.index import Doc


def _doc(n: int) -> Doc:
    return Doc(
        sku=f"SKU-{n:06d}",
        name=f"Copper Kettle {n}",
        description="",
        category="home-kitchen",
        price_minor=1000 + n,
        attributes={},
    )


def test_a_build_reports_its_progress_in_metrics():
    index = _build_index([_doc(n) for n in range(BUILD_CHUNK + 10)])
    shown = search_reindex.index_metrics(generate_latest().decode())
    assert len(index) == BUILD_CHUNK + 10
    assert shown["agora_search_index_build_progress"] == 1.0


def test_metrics_text_is_parsed():
    text = (
        "# HELP agora_search_index_rebuilds_total x\n"
        "agora_search_index_rebuilds_total 3.0\n"
        "agora_search_index_rebuilds_created 1.7e+09\n"
        "agora_search_index_build_progress 0.25\n"
        "agora_search_index_documents 2400.0\n"
    )
    assert search_reindex.index_metrics(text) == {
        "agora_search_index_rebuilds_total": 3.0,
        "agora_search_index_build_progress": 0.25,
    }


@pytest.fixture
def api() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server answering /metrics from a script of bodies (the last repeats)."""
    bodies = [
        "agora_search_index_rebuilds_total 1.0\nagora_search_index_build_progress 1.0\n",
        "agora_search_index_rebuilds_total 1.0\nagora_search_index_build_progress 1.0\n",
        "agora_search_index_rebuilds_total 1.0\nagora_search_index_build_progress 0.0\n",
        "agora_search_index_rebuilds_total 1.0\nagora_search_index_build_progress 0.5\n",
        "agora_search_index_rebuilds_total 2.0\nagora_search_index_build_progress 1.0\n",
    ]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (bodies.pop(0) if len(bodies) > 1 else bodies[0]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()


def test_the_bar_follows_the_rebuild_until_the_counter_moves(api, capsys):
    url, bodies = api
    before = search_reindex.read_index_metrics(url)
    assert before == {
        "agora_search_index_rebuilds_total": 1.0,
        "agora_search_index_build_progress": 1.0,
    }
    took = search_reindex.follow_rebuild(url, before["agora_search_index_rebuilds_total"], 10)
    assert took is not None and len(bodies) == 1
    shown = capsys.readouterr().out
    assert "  0%" in shown and " 50%" in shown and "100%" in shown
    assert " 99%" not in shown  # the last build's 1.0, seen before this one began


def test_no_rebuild_in_time_or_no_api_is_none(api):
    url, bodies = api
    bodies[:] = ["agora_search_index_rebuilds_total 1.0\n"]
    assert search_reindex.follow_rebuild(url, 1.0, timeout_s=0.5) is None
    assert search_reindex.read_index_metrics("http://127.0.0.1:9") is None
    assert search_reindex.follow_rebuild("http://127.0.0.1:9", 0.0, timeout_s=5) is None
