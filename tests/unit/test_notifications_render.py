"""Mail rendering: locales, money, both MIME parts, escaping, deterministic Message-ID."""

from email import message_from_string, policy

from streams.consumers.notifications import build_message, locale_of, message_id, money, render

ORDER = {
    "id": "ord-1",
    "user_id": "u1",
    "status": "awaiting_payment",
    "lines": [
        {
            "sku": "MUG-1",
            "name": "Caneca <b>",
            "quantity": 2,
            "unit_price": 1990,
            "line_total": 3980,
        }
    ],
    "totals": {"subtotal": 3980, "discount_total": 500, "shipping": 1500, "tax": 0, "total": 4980},
    "address": {
        "name": "Ana",
        "line1": "Rua Um, 1",
        "city": "São Paulo",
        "postal_code": "01000-000",
        "country": "BR",
    },
    "method": "standard",
    "pix": {"br_code": "00020126PIXCODE", "expires_at": "2026-12-04T04:00:00Z"},
}


def test_money_is_formatted_per_locale() -> None:
    assert money(123456, "pt-BR") == "R$ 1.234,56"
    assert money(123456, "en") == "R$1,234.56"
    assert money(5, "pt-BR") == "R$ 0,05"
    assert money(-500, "en") == "-R$5.00"


def test_locale_comes_from_the_preference_else_the_default() -> None:
    assert locale_of({"locale": "en-US"}) == "en"
    assert locale_of({"locale": "pt_BR"}) == "pt-BR"
    assert locale_of({}, default="en") == "en"
    assert locale_of({"locale": "fr"}) == "pt-BR"
    assert locale_of(None) == "pt-BR"


def test_order_mail_in_portuguese_has_lines_totals_delivery_and_the_pix_code() -> None:
    mail = render("order_awaiting_payment", "pt-BR", name="Ana", order=ORDER)
    assert mail.subject == "Pedido ord-1: pague com Pix"
    for part in (mail.text, mail.html):
        assert "R$ 39,80" in part and "R$ 49,80" in part and "-R$ 5,00" in part
        assert "00020126PIXCODE" in part
        assert "01000-000" in part
    assert "Caneca <b>" in mail.text
    assert "Caneca &lt;b&gt;" in mail.html


def test_the_same_mail_in_english() -> None:
    mail = render("order_confirmed", "en", name="Bob", order={**ORDER, "pix": None})
    assert mail.subject == "Order ord-1 confirmed"
    assert "Hello, Bob." in mail.text
    assert "R$49.80" in mail.text
    assert "Pix" not in mail.text


def test_html_escapes_what_shoppers_typed() -> None:
    mail = render("welcome", "en", name="<script>alert(1)</script>")
    assert "<script>" not in mail.html
    assert "&lt;script&gt;" in mail.html


def test_account_mails_exist_in_both_locales() -> None:
    for kind in ("welcome", "mfa_enabled", "password_changed", "password_reset"):
        for locale in ("pt-BR", "en"):
            mail = render(kind, locale, name="X", code="TOKEN", link="http://x/r?token=TOKEN")
            assert mail.subject and mail.text and mail.html
    assert "TOKEN" in render("password_reset", "en", code="TOKEN").text


def test_the_message_has_a_plain_text_and_an_html_part_and_a_stable_id() -> None:
    mail = render("order_shipped", "pt-BR", name="Ana", order=ORDER)
    raw = build_message("Agora <no-reply@agora.example>", "ana@example.com", mail, "evt:kind")
    parsed = message_from_string(raw, policy=policy.default)
    assert parsed["To"] == "ana@example.com"
    assert parsed.get_content_type() == "multipart/alternative"
    types = [part.get_content_type() for part in parsed.iter_parts()]
    assert types == ["text/plain", "text/html"]
    assert parsed["Message-ID"] == message_id("evt:kind")
    assert message_id("evt:kind") != message_id("evt:other")
    assert "Pedido ord-1 enviado" in str(parsed["Subject"])
