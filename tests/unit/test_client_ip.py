"""Which address a request counts against: forwarding headers only from trusted proxies."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from serve.ratelimit import client_ip, trusted_networks

XFF = "X-Forwarded-For"
PROXIES = trusted_networks(["10.0.0.0/8", "fd00::/8"])

CASES = [
    # (case, peer, headers, trusted header, expected)
    ("nothing at all", None, {}, XFF, "unknown"),
    ("peer is not an address", "testclient", {XFF: "203.0.113.7"}, XFF, "unknown"),
    ("no header configured", "10.0.0.2", {XFF: "203.0.113.7"}, None, "10.0.0.2"),
    ("untrusted peer, no header", "198.51.100.4", {}, XFF, "198.51.100.4"),
    ("untrusted peer spoofs the header", "198.51.100.4", {XFF: "203.0.113.7"}, XFF, "198.51.100.4"),
    ("trusted peer, no header", "10.0.0.2", {}, XFF, "10.0.0.2"),
    ("trusted peer, empty header", "10.0.0.2", {XFF: ""}, XFF, "10.0.0.2"),
    ("trusted peer, one hop", "10.0.0.2", {XFF: "203.0.113.7"}, XFF, "203.0.113.7"),
    (
        "client-sent entries left of the client are ignored",
        "10.0.0.2",
        {XFF: "1.2.3.4, 203.0.113.7, 10.0.0.9"},
        XFF,
        "203.0.113.7",
    ),
    ("every hop is a trusted proxy", "10.0.0.2", {XFF: "10.0.0.5, 10.0.0.9"}, XFF, "10.0.0.5"),
    ("garbage header", "10.0.0.2", {XFF: "not-an-ip"}, XFF, "10.0.0.2"),
    ("garbage right-most entry", "10.0.0.2", {XFF: "203.0.113.7, bogus"}, XFF, "10.0.0.2"),
    ("garbage left of the client", "10.0.0.2", {XFF: "<script>, 203.0.113.7"}, XFF, "203.0.113.7"),
    (
        "header name is case-insensitive",
        "10.0.0.2",
        {"x-forwarded-for": "203.0.113.7"},
        XFF,
        "203.0.113.7",
    ),
    ("IPv4 entry with a port", "10.0.0.2", {XFF: "203.0.113.7:5555"}, XFF, "203.0.113.7"),
    ("untrusted IPv6 peer", "2001:DB8::0:1", {XFF: "203.0.113.7"}, XFF, "2001:db8::1"),
    (
        "trusted IPv6 peer, IPv6 client",
        "fd00::2",
        {XFF: "2001:DB8:0:0::ABCD"},
        XFF,
        "2001:db8::abcd",
    ),
    ("bracketed IPv6 with a port", "fd00::2", {XFF: "[2001:db8::7]:443"}, XFF, "2001:db8::7"),
    (
        "IPv4-mapped peer is the IPv4 proxy",
        "::ffff:10.0.0.2",
        {XFF: "203.0.113.7"},
        XFF,
        "203.0.113.7",
    ),
    ("IPv4-mapped client", "10.0.0.2", {XFF: "::ffff:203.0.113.7"}, XFF, "203.0.113.7"),
    (
        "another single-address header",
        "10.0.0.2",
        {"X-Real-IP": "203.0.113.7"},
        "X-Real-IP",
        "203.0.113.7",
    ),
]


@pytest.mark.parametrize(
    ("peer", "headers", "header", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_client_ip(peer, headers, header, expected):
    assert client_ip(peer, headers, header, PROXIES) == expected


def test_repeated_header_lines_are_read_as_one_list():
    headers = Headers(raw=[(b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-for", b"203.0.113.7")])
    assert client_ip("10.0.0.2", headers, XFF, PROXIES) == "203.0.113.7"


def test_no_trusted_proxies_means_the_header_is_never_read():
    assert client_ip("10.0.0.2", {XFF: "203.0.113.7"}, XFF, frozenset()) == "10.0.0.2"


def test_trusted_networks_accepts_addresses_and_blocks():
    assert trusted_networks([" 127.0.0.1 ", "10.1.2.3/8", "::1"]) == trusted_networks(
        ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    )
    with pytest.raises(ValueError):
        trusted_networks(["proxy.internal"])
