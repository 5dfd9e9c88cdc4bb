"""The independent verifier: the offline checks, and its exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.infra import _free_port
from ledger.merkle import MerkleTree, leaf_data_for, leaf_hash, to_hex
from ledger.verify import ProofInvalid, check_offline, main


def proof(n: int = 5, index: int = 3) -> dict:
    datas = [leaf_data_for("test", f"k{i}", f"d{i}") for i in range(n)]
    tree = MerkleTree.build([leaf_hash(d) for d in datas])
    return {
        "leaf_data": datas[index],
        "leaf": to_hex(leaf_hash(datas[index])),
        "path": [to_hex(p) for p in tree.proof(index)],
        "root": to_hex(tree.root),
        "batch_id": 1,
        "chain_id": 31337,
        "contract": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "tx_hash": "0x" + "ab" * 32,
        "block_number": 2,
    }


def test_a_good_proof_passes_the_offline_checks() -> None:
    good = proof()
    leaf, root = check_offline(good)
    assert to_hex(leaf) == good["leaf"] and to_hex(root) == good["root"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"leaf_data": "agora.test.v1|key=k3|data=dX"}, "keccak256"),
        ({"leaf_data": "not ours"}, "canonical"),
        ({"leaf_data": 7}, "leaf_data"),
        ({"leaf": "0x1234"}, "hex"),
        ({"root": "0x" + "00" * 32}, "path"),
        ({"path": []}, "path"),
        ({"path": "0xab"}, "path"),
        ({"path": ["zz"]}, "hex"),
    ],
)
def test_any_change_fails_offline(change: dict, message: str) -> None:
    with pytest.raises(ProofInvalid, match=message):
        check_offline({**proof(), **change})


def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nowhere = f"http://127.0.0.1:{_free_port(18900, 19000)}"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**proof(), "root": "0x" + "11" * 32}))
    assert main([str(bad), "--rpc", nowhere]) == 1
    assert capsys.readouterr().out.startswith("FAIL: the Merkle path")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("[1, 2")
    assert main([str(garbage), "--rpc", nowhere]) == 1
    assert main([str(tmp_path / "missing.json"), "--rpc", nowhere]) == 1
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    assert main([str(listed), "--rpc", nowhere]) == 1
    good = tmp_path / "good.json"
    good.write_text(json.dumps(proof()))
    assert main([str(good), "--rpc", nowhere]) == 1  # no node: cannot be checked, fails
    assert capsys.readouterr().out.count("FAIL:") == 4
