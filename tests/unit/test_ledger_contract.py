"""The committed AnchorRegistry ABI and bytecode are what solc-js makes of the source."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ledger import compile as compile_module
from ledger.compile import ToolsMissing, compile_contract, load_artifact

ROOT = compile_module.LEDGER_DIR.parent


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


def test_check_finds_a_stale_artifact_and_a_write_makes_it_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A path under the repository as written (main prints it relative), in tmp_path in fact.
    artifact = Path(compile_module.LEDGER_DIR.parent, os.path.relpath(tmp_path, ROOT), "a.json")
    stale = {**load_artifact(), "bytecode": "0x00"}
    artifact.write_text(json.dumps(stale))
    monkeypatch.setattr(compile_module, "ARTIFACT", artifact)
    assert compile_module.main(["--check"]) == 1
    assert capsys.readouterr().out == "AnchorRegistry.json is stale\n"
    assert compile_module.main([]) == 0
    assert capsys.readouterr().out.startswith("wrote ")
    monkeypatch.undo()
    assert json.loads(artifact.read_text()) == load_artifact()


def test_missing_tools_or_a_failing_solc_are_errors_not_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compile_module, "NODE_MODULES", tmp_path)
    with pytest.raises(ToolsMissing, match="make deps"):
        compile_contract()
    (tmp_path / "solc").mkdir()
    (tmp_path / "compile.mjs").write_text('process.stderr.write("boom"); process.exit(3);\n')
    monkeypatch.setattr(compile_module, "LEDGER_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="solc failed: boom"):
        compile_contract()
    monkeypatch.setattr(compile_module.shutil, "which", lambda _name: None)
    with pytest.raises(ToolsMissing, match="node is not on PATH"):
        compile_contract()
