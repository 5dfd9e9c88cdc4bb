"""The committed AnchorRegistry ABI and bytecode are what solc-js makes of the source."""

from __future__ import annotations

import json

from ledger.compile import compile_contract, load_artifact


def test_committed_artifact_matches_a_fresh_compile() -> None:
    # node and ledger/node_modules come from `make deps` (npm ci --prefix ledger); a
    # missing tool fails this test (ToolsMissing) rather than skipping it.
    fresh = json.loads(compile_contract())
    committed = load_artifact()
    assert fresh["bytecode"] == committed["bytecode"]
    assert fresh["abi"] == committed["abi"]
    assert fresh == committed


def test_the_interface_is_exactly_the_issues() -> None:
    abi = load_artifact()["abi"]
    functions = {
        item["name"]: (
            [(i["type"], i["name"]) for i in item["inputs"]],
            [o["type"] for o in item["outputs"]],
            item["stateMutability"],
        )
        for item in abi
        if item["type"] == "function"
    }
    assert functions == {
        "anchor": (
            [("uint256", "batchId"), ("bytes32", "root"), ("uint64", "count")],
            [],
            "nonpayable",
        ),
        "roots": ([("uint256", "batchId")], ["bytes32"], "view"),
    }
    (event,) = [item for item in abi if item["type"] == "event"]
    assert event["name"] == "Anchored"
    assert [(i["type"], i["name"], i["indexed"]) for i in event["inputs"]] == [
        ("uint256", "batchId", True),
        ("bytes32", "root", False),
        ("uint64", "count", False),
    ]
