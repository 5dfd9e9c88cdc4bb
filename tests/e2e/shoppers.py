"""Make shoppers and products for e2e tests (unique per test, no cleanup needed)."""

import secrets
import uuid

import httpx


def new_shopper(http: httpx.Client) -> dict[str, str]:
    """Register and log in a new shopper; returns its headers and ids."""
    email = f"t-{uuid.uuid4().hex}@example.com"
    password = secrets.token_urlsafe(14)
    reply = http.post(
        "/v1/auth/register", json={"email": email, "password": password, "name": "Test Shopper"}
    )
    assert reply.status_code == 201, reply.text
    tokens = http.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": password},
    )
    assert tokens.status_code == 200, tokens.text
    return {
        "Authorization": f"Bearer {tokens.json()['access_token']}",
        "user_id": reply.json()["user_id"],
        "email": email,
        "password": password,
    }


def login_with_cart(http: httpx.Client, shopper: dict[str, str], cart_token: str) -> dict:
    """Log the shopper in again, presenting an anonymous cart to merge."""
    tokens = http.post(
        "/v1/auth/token",
        headers={"X-Cart-Token": cart_token},
        data={
            "grant_type": "password",
            "username": shopper["email"],
            "password": shopper["password"],
        },
    )
    assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}


def auth(shopper: dict[str, str]) -> dict[str, str]:
    """Only the Authorization header of a shopper made by ``new_shopper``."""
    return {"Authorization": shopper["Authorization"]}


async def new_product(db, on_hand: int, price: int = 5_000, category: str = "test") -> str:
    sku = f"TST-{uuid.uuid4().hex[:12].upper()}"
    await db.execute(
        "INSERT INTO products (sku, name, description, category, price_minor)"
        " VALUES ($1, 'Test item', 'For tests', $2, $3)",
        sku,
        category,
        price,
    )
    await db.execute("INSERT INTO inventory (sku, on_hand) VALUES ($1, $2)", sku, on_hand)
    return sku


def new_admin(http: httpx.Client) -> dict[str, str]:
    """An operator made with the CLI (the only way to make one), logged in."""
    import subprocess
    import sys
    from pathlib import Path

    email, password = f"t-{uuid.uuid4().hex}@example.com", secrets.token_urlsafe(16)
    subprocess.run(
        [str(Path(sys.executable).parent / "agora"), "admin", "create", email, "--password-stdin"],
        input=password + "\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    tokens = http.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": password},
    )
    assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}
