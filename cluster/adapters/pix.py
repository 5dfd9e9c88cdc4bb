"""Pix BR Codes ("Pix copia e cola"): the EMV merchant-presented QR payload of the BCB spec.

Pure functions, standard library only. A BR Code is a sequence of EMV fields,
each ``ID`` (2 digits) + length (2 digits) + value, ending with field 63: a
CRC-16/CCITT-FALSE of the whole payload up to and including ``6304``, as four
uppercase hex digits. ``br_code`` builds the payload of one dynamic charge
(amount and txid fixed); ``parse_emv`` and ``valid_br_code`` read one back.
"""

from __future__ import annotations

import re
import unicodedata

GUI = "br.gov.bcb.pix"
MAX_NAME = 25
MAX_CITY = 15
MAX_TXID = 25
_MAX_FIELD = 99
_TXID = re.compile(r"[A-Za-z0-9]{1,25}")
_PRINTABLE = re.compile(r"[ -~]+")


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: polynomial 0x1021, initial 0xFFFF, no reflection, no final xor."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _field(field_id: str, value: str) -> str:
    if len(value) > _MAX_FIELD:
        raise ValueError(f"EMV field {field_id} is longer than {_MAX_FIELD} characters")
    return f"{field_id}{len(value):02d}{value}"


def ascii_fold(text: str) -> str:
    """Upper-case ASCII with accents dropped ("São Paulo" -> "SAO PAULO"), spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_only = decomposed.encode("ascii", "ignore").decode("ascii")
    printable = "".join(_PRINTABLE.findall(ascii_only))
    return " ".join(printable.split()).upper()


def format_amount(amount_minor: int) -> str:
    """Minor units to the BR Code amount: 1 -> "0.01", 123456 -> "1234.56"."""
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor <= 0:
        raise ValueError("amount must be a positive integer of minor units")
    text = f"{amount_minor // 100}.{amount_minor % 100:02d}"
    if len(text) > 13:
        raise ValueError("amount does not fit a BR Code (13 characters at most)")
    return text


def br_code(
    pix_key: str, merchant_name: str, merchant_city: str, amount_minor: int, txid: str
) -> str:
    """The "copia e cola" payload charging ``amount_minor`` centavos to ``pix_key``."""
    if not pix_key or not _PRINTABLE.fullmatch(pix_key):
        raise ValueError("the Pix key must be non-empty printable ASCII")
    if not _TXID.fullmatch(txid):
        raise ValueError(f"txid must be 1..{MAX_TXID} characters of [A-Za-z0-9]")
    name = ascii_fold(merchant_name)[:MAX_NAME].rstrip()
    city = ascii_fold(merchant_city)[:MAX_CITY].rstrip()
    if not name or not city:
        raise ValueError("merchant name and city must keep some ASCII letters")
    payload = "".join(
        (
            _field("00", "01"),
            _field("26", _field("00", GUI) + _field("01", pix_key)),
            _field("52", "0000"),
            _field("53", "986"),
            _field("54", format_amount(amount_minor)),
            _field("58", "BR"),
            _field("59", name),
            _field("60", city),
            _field("62", _field("05", txid)),
            "6304",
        )
    )
    return payload + f"{crc16_ccitt(payload.encode('ascii')):04X}"


def parse_emv(payload: str) -> dict[str, str]:
    """The top-level fields of an EMV payload by ID; nested templates stay raw (parse them again).

    Raises ``ValueError`` on a truncated or malformed payload or a repeated ID.
    """
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(payload):
        head = payload[pos : pos + 4]
        if len(head) < 4 or not head.isdigit():
            raise ValueError(f"malformed EMV field header at {pos}")
        field_id, length = head[:2], int(head[2:])
        value = payload[pos + 4 : pos + 4 + length]
        if len(value) != length:
            raise ValueError(f"EMV field {field_id} is truncated")
        if field_id in fields:
            raise ValueError(f"EMV field {field_id} appears twice")
        fields[field_id] = value
        pos += 4 + length
    return fields


def valid_br_code(payload: str) -> bool:
    """Whether ``payload`` parses and ends with a CRC field matching the rest."""
    try:
        fields = parse_emv(payload)
        data = payload.encode("ascii")
    except (ValueError, UnicodeEncodeError):
        return False
    crc = fields.get("63")
    if crc is None or not payload.endswith("6304" + crc) or not re.fullmatch(r"[0-9A-F]{4}", crc):
        return False
    return crc16_ccitt(data[:-4]) == int(crc, 16)
