"""Compile ``AnchorRegistry.sol`` with solc-js (npm, pinned in ledger/package.json).

``python -m ledger.compile`` writes ``ledger/contracts/AnchorRegistry.json``
(ABI and bytecode, committed); ``--check`` exits 1 if the committed file
differs from a fresh compile. The node tools are installed by ``make deps``
(``npm ci --prefix ledger``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

LEDGER_DIR = Path(__file__).resolve().parent
ARTIFACT = LEDGER_DIR / "contracts" / "AnchorRegistry.json"
NODE_MODULES = LEDGER_DIR / "node_modules"


class ToolsMissing(RuntimeError):
    """node or the ledger's npm packages are not installed (run ``make deps``)."""


def compile_contract() -> str:
    """The artifact JSON text of a fresh compile."""
    node = shutil.which("node")
    if node is None:
        raise ToolsMissing("node is not on PATH")
    if not (NODE_MODULES / "solc").is_dir():
        raise ToolsMissing("solc-js is not installed: run `make deps` (npm ci --prefix ledger)")
    done = subprocess.run(
        [node, str(LEDGER_DIR / "compile.mjs")],
        capture_output=True,
        text=True,
        check=False,
        cwd=LEDGER_DIR,
    )
    if done.returncode != 0:
        raise RuntimeError(f"solc failed: {done.stderr.strip()}")
    return done.stdout


def load_artifact() -> dict[str, Any]:
    """The committed ABI and bytecode."""
    artifact: dict[str, Any] = json.loads(ARTIFACT.read_text())
    return artifact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledger.compile", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    fresh = compile_contract()
    if args.check:
        same = json.loads(fresh) == load_artifact()
        print("AnchorRegistry.json matches the source" if same else "AnchorRegistry.json is stale")
        return 0 if same else 1
    ARTIFACT.write_text(fresh)
    print(f"wrote {ARTIFACT.relative_to(LEDGER_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
