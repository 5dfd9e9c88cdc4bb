"""The chain side of the ledger: deploy AnchorRegistry, anchor roots, read receipts (web3.py).

Any EVM JSON-RPC node works. Transactions are legacy-priced (``gasPrice``), so
the same code runs on anvil, a testnet or a chain without EIP-1559. A
transaction is built and signed first (``AnchorTx``: its hash is known before
it is sent, so the caller can record it), then sent; sending the same signed
bytes twice is harmless (the node answers "already known" or, once mined,
"nonce too low", and both are treated as sent).

The private key lives in ``Chain`` only; nothing here logs or repr()s it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import TransactionNotFound, Web3RPCError

from ledger.compile import load_artifact

# The first of anvil's well-known dev accounts (public knowledge; only for the embedded anvil).
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANCHOR_GAS_LIMIT = 120_000
DEPLOY_GAS_LIMIT = 1_000_000
RPC_TIMEOUT_S = 10.0
_SENT_ALREADY = ("already known", "nonce too low", "already imported", "known transaction")


async def node_reachable(rpc_url: str, timeout_s: float = 1.0) -> bool:
    """Whether the node answers ``eth_chainId`` within ``timeout_s`` (no key needed)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(rpc_url, json=body) as reply,
        ):
            answer = await reply.json(content_type=None)
            return reply.status == 200 and "result" in answer
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return False


class ChainUnavailable(RuntimeError):
    """The node did not answer (down, unreachable, timed out)."""


@dataclass(frozen=True)
class AnchorTx:
    """A signed ``anchor`` transaction, ready to (re)send."""

    batch_id: int
    nonce: int
    tx_hash: bytes
    raw: bytes


@dataclass(frozen=True)
class Receipt:
    tx_hash: bytes
    status: int
    block_number: int
    block_hash: bytes
    gas_used: int
    to: str | None
    contract_address: str | None
    logs: list[Any]


class Chain:
    """One node, one signing account, the AnchorRegistry ABI."""

    def __init__(self, rpc_url: str, private_key: str, timeout_s: float = RPC_TIMEOUT_S) -> None:
        self.rpc_url = rpc_url
        self.w3 = AsyncWeb3(AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
        self._account: LocalAccount = Account.from_key(private_key)
        artifact = load_artifact()
        self.abi: list[dict[str, Any]] = artifact["abi"]
        self.bytecode: str = artifact["bytecode"]
        self._chain_id: int | None = None

    def __repr__(self) -> str:
        return f"Chain({self.rpc_url!r}, account={self.address})"

    @property
    def address(self) -> ChecksumAddress:
        return self._account.address

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (OSError, TimeoutError) as exc:
            raise ChainUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # aiohttp's errors are not all OSErrors; treat any transport trouble alike.
            if type(exc).__module__.startswith("aiohttp"):
                raise ChainUnavailable(f"{type(exc).__name__}: {exc}") from exc
            raise

    async def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(await self._call(self.w3.eth.chain_id))
        return self._chain_id

    async def reachable(self) -> bool:
        try:
            await self._call(self.w3.eth.block_number)
        except ChainUnavailable:
            return False
        return True

    async def block_number(self) -> int:
        return int(await self._call(self.w3.eth.block_number))

    async def code_at(self, address: str) -> bytes:
        code = await self._call(self.w3.eth.get_code(AsyncWeb3.to_checksum_address(address)))
        return bytes(code)

    async def pending_nonce(self) -> int:
        return int(await self._call(self.w3.eth.get_transaction_count(self.address, "pending")))

    async def latest_nonce(self) -> int:
        """Transactions of this account already mined."""
        return int(await self._call(self.w3.eth.get_transaction_count(self.address, "latest")))

    async def anchored_tx(self, address: str, batch_id: int) -> bytes | None:
        """The transaction whose ``Anchored`` event carries ``batch_id`` (None: not anchored)."""
        topic0 = AsyncWeb3.keccak(text="Anchored(uint256,bytes32,uint64)")
        logs = await self._call(
            self.w3.eth.get_logs(
                {
                    "address": AsyncWeb3.to_checksum_address(address),
                    "fromBlock": 0,
                    "toBlock": "latest",
                    "topics": [topic0, HexBytes(batch_id.to_bytes(32, "big"))],
                }
            )
        )
        return bytes(logs[0]["transactionHash"]) if logs else None

    async def _gas_price(self) -> int:
        return int(await self._call(self.w3.eth.gas_price))

    def contract(self, address: str) -> Any:
        return self.w3.eth.contract(address=AsyncWeb3.to_checksum_address(address), abi=self.abi)

    async def roots(self, address: str, batch_id: int) -> bytes:
        """The root anchored for ``batch_id`` (32 zero bytes: none)."""
        value = await self._call(self.contract(address).functions.roots(batch_id).call())
        return bytes(value)

    async def deploy(self, confirmations: int = 0, timeout_s: float = 60.0) -> tuple[str, bytes]:
        """Deploy AnchorRegistry from this account; (address, tx hash) once mined."""
        tx: dict[str, Any] = {
            "from": self.address,
            "data": self.bytecode,
            "nonce": await self.pending_nonce(),
            "gas": DEPLOY_GAS_LIMIT,
            "gasPrice": await self._gas_price(),
            "chainId": await self.chain_id(),
        }
        signed = self._account.sign_transaction(tx)
        await self.send_raw(bytes(signed.raw_transaction))
        receipt = await self.wait_for_receipt(bytes(signed.hash), confirmations, timeout_s)
        if receipt is None or receipt.status != 1 or receipt.contract_address is None:
            raise RuntimeError("AnchorRegistry deployment failed")
        return receipt.contract_address, receipt.tx_hash

    async def build_anchor(
        self, address: str, batch_id: int, root: bytes, count: int, nonce: int
    ) -> AnchorTx:
        """Sign ``anchor(batch_id, root, count)`` with ``nonce`` (nothing is sent)."""
        call = self.contract(address).functions.anchor(batch_id, root, count)
        tx = await call.build_transaction(
            {
                "from": self.address,
                "nonce": nonce,
                "gas": ANCHOR_GAS_LIMIT,
                "gasPrice": await self._gas_price(),
                "chainId": await self.chain_id(),
            }
        )
        signed = self._account.sign_transaction(tx)
        return AnchorTx(batch_id, nonce, bytes(signed.hash), bytes(signed.raw_transaction))

    async def send_raw(self, raw: bytes) -> None:
        """Send signed bytes; already-known or already-mined counts as sent."""
        try:
            await self._call(self.w3.eth.send_raw_transaction(raw))
        except Web3RPCError as exc:
            if any(text in str(exc).lower() for text in _SENT_ALREADY):
                return
            raise

    async def receipt(self, tx_hash: bytes) -> Receipt | None:
        try:
            r = await self._call(self.w3.eth.get_transaction_receipt(HexBytes(tx_hash)))
        except TransactionNotFound:
            return None
        if r is None:
            return None
        return Receipt(
            tx_hash=bytes(r["transactionHash"]),
            status=int(r["status"]),
            block_number=int(r["blockNumber"]),
            block_hash=bytes(r["blockHash"]),
            gas_used=int(r["gasUsed"]),
            to=r.get("to"),
            contract_address=r.get("contractAddress"),
            logs=list(r["logs"]),
        )

    async def confirmed_receipt(self, tx_hash: bytes, confirmations: int) -> Receipt | None:
        """The receipt once ``confirmations`` blocks sit on top of its block, else None."""
        receipt = await self.receipt(tx_hash)
        if receipt is None:
            return None
        if await self.block_number() - receipt.block_number < confirmations:
            return None
        return receipt

    async def wait_for_receipt(
        self, tx_hash: bytes, confirmations: int, timeout_s: float, poll_s: float = 0.1
    ) -> Receipt | None:
        """Poll for a confirmed receipt up to ``timeout_s``; None when it did not come."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            receipt = await self.confirmed_receipt(tx_hash, confirmations)
            if receipt is not None or loop.time() >= deadline:
                return receipt
            await asyncio.sleep(poll_s)

    async def close(self) -> None:
        await self.w3.provider.disconnect()
