"""Check a ledger proof against an EVM node alone: ``python -m ledger.verify PROOF.json --rpc URL``.

PROOF.json is the body of ``GET /v1/orders/{id}/proof``. Nothing of Agora is
consulted (no database, no API): only the proof and the node. Checks, in order:

1. ``leaf == keccak256(leaf_data)`` (and the leaf data is Agora's canonical form);
2. the path leads from the leaf to ``root`` (sorted-pair keccak, see ledger.merkle);
3. the node's chain id is the proof's ``chain_id``;
4. ``AnchorRegistry.roots(batch_id)`` at ``contract`` returns ``root``;
5. the receipt of ``tx_hash`` succeeded, was sent to ``contract``, and holds the
   contract's ``Anchored(batch_id, root, count)`` event;
6. the receipt's block is ``block_number`` and that block, as the node has it
   now, holds the transaction (no reorg dropped it).

Exit code 0 when every check passes, 1 otherwise (the failing check is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from eth_hash.auto import keccak
from hexbytes import HexBytes
from web3 import HTTPProvider, Web3

from ledger.merkle import LEAF_PREFIX, from_hex, root_from_path

ANCHORED_TOPIC = bytes(keccak(b"Anchored(uint256,bytes32,uint64)"))
ROOTS_SELECTOR = bytes(keccak(b"roots(uint256)"))[:4]


class ProofInvalid(Exception):
    """One check failed; the message says which."""


def _field(proof: dict[str, Any], name: str, kind: type) -> Any:
    value = proof.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProofInvalid(f"proof field {name!r} is missing or not a {kind.__name__}")
    return value


def check_offline(proof: dict[str, Any]) -> tuple[bytes, bytes]:
    """Checks 1 and 2 (no node needed); returns (leaf, root)."""
    leaf_data = _field(proof, "leaf_data", str)
    if not leaf_data.startswith(LEAF_PREFIX):
        raise ProofInvalid("leaf_data is not in Agora's canonical form")
    try:
        leaf = from_hex(_field(proof, "leaf", str))
        root = from_hex(_field(proof, "root", str))
        path = [from_hex(p) for p in _field(proof, "path", list)]
    except ValueError as exc:
        raise ProofInvalid(f"bad hex in the proof: {exc}") from exc
    if bytes(keccak(leaf_data.encode("utf-8"))) != leaf:
        raise ProofInvalid("leaf is not keccak256(leaf_data)")
    if root_from_path(leaf, path) != root:
        raise ProofInvalid("the Merkle path does not lead from the leaf to the root")
    return leaf, root


def check_on_chain(proof: dict[str, Any], w3: Web3, root: bytes) -> str:
    """Checks 3 to 6 against the node; returns a one-line summary."""
    batch_id = _field(proof, "batch_id", int)
    chain_id = _field(proof, "chain_id", int)
    block_number = _field(proof, "block_number", int)
    contract_text = _field(proof, "contract", str)
    if not Web3.is_address(contract_text):
        raise ProofInvalid("contract is not an address")
    contract = Web3.to_checksum_address(contract_text)
    try:
        tx_hash = from_hex(_field(proof, "tx_hash", str))
    except ValueError as exc:
        raise ProofInvalid(f"bad tx_hash: {exc}") from exc
    if batch_id < 0:
        raise ProofInvalid("batch_id is negative")

    node_chain = int(w3.eth.chain_id)
    if node_chain != chain_id:
        raise ProofInvalid(f"the node is chain {node_chain}, the proof names {chain_id}")
    call_data = ROOTS_SELECTOR + batch_id.to_bytes(32, "big")
    onchain = bytes(w3.eth.call({"to": contract, "data": HexBytes(call_data)}))
    if onchain != root:
        raise ProofInvalid(f"roots({batch_id}) on chain is 0x{onchain.hex()}, not the root")
    receipt = w3.eth.get_transaction_receipt(HexBytes(tx_hash))
    if int(receipt["status"]) != 1:
        raise ProofInvalid("the anchoring transaction failed")
    if (receipt.get("to") or "").lower() != contract.lower():
        raise ProofInvalid("the anchoring transaction was not sent to the contract")
    if int(receipt["blockNumber"]) != block_number:
        raise ProofInvalid(f"the transaction is in block {receipt['blockNumber']}")
    events = [
        log
        for log in receipt["logs"]
        if log["address"].lower() == contract.lower()
        and len(log["topics"]) == 2
        and bytes(log["topics"][0]) == ANCHORED_TOPIC
        and int.from_bytes(bytes(log["topics"][1]), "big") == batch_id
        and bytes(log["data"])[:32] == root
    ]
    if not events:
        raise ProofInvalid("the receipt has no Anchored(batch_id, root) event of the contract")
    count = int.from_bytes(bytes(events[0]["data"])[32:64], "big")
    block = w3.eth.get_block(block_number)
    if bytes(block["hash"]) != bytes(receipt["blockHash"]):
        raise ProofInvalid("the block at block_number is not the receipt's block (reorg?)")
    if HexBytes(tx_hash) not in [HexBytes(t) for t in block["transactions"]]:  # type: ignore[arg-type]
        raise ProofInvalid("the block does not hold the transaction")
    latest = int(w3.eth.block_number)
    return (
        f"batch {batch_id} ({count} leaves) anchored in block {block_number} of chain "
        f"{chain_id}, {latest - block_number} confirmations"
    )


def verify_proof(proof: dict[str, Any], rpc_url: str, timeout_s: float = 10.0) -> str:
    _leaf, root = check_offline(proof)
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
    return check_on_chain(proof, w3, root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledger.verify", description=__doc__)
    parser.add_argument("proof", type=Path, help="the proof JSON (GET /v1/orders/{id}/proof)")
    parser.add_argument("--rpc", required=True, help="an EVM JSON-RPC node URL")
    args = parser.parse_args(argv)
    try:
        proof = json.loads(args.proof.read_text())
        if not isinstance(proof, dict):
            raise ProofInvalid("the proof is not a JSON object")
        summary = verify_proof(proof, args.rpc)
    except (ProofInvalid, OSError, ValueError) as exc:
        print(f"FAIL: {exc}")
        return 1
    except Exception as exc:  # the node's errors (unknown tx, no contract...) fail too
        print(f"FAIL: {type(exc).__name__}: {exc}")
        return 1
    print(f"OK: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
