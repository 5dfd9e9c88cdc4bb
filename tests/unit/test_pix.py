"""BR Code payloads: CRC-16/CCITT-FALSE, field layout, amounts, name and city folding."""

import pytest

from cluster.adapters.pix import br_code, crc16_ccitt, format_amount, parse_emv, valid_br_code

KEY = "pix@agora.example"


def test_crc16_known_vector():
    assert crc16_ccitt(b"123456789") == 0x29B1
    assert crc16_ccitt(b"") == 0xFFFF


def test_br_code_fields_and_crc():
    code = br_code(KEY, "Agora", "Sao Paulo", 12345, "abc123XYZ")
    fields = parse_emv(code)
    assert list(fields) == ["00", "26", "52", "53", "54", "58", "59", "60", "62", "63"]
    assert fields["00"] == "01"
    assert parse_emv(fields["26"]) == {"00": "br.gov.bcb.pix", "01": KEY}
    assert fields["52"] == "0000"
    assert fields["53"] == "986"
    assert fields["54"] == "123.45"
    assert fields["58"] == "BR"
    assert fields["59"] == "AGORA"
    assert fields["60"] == "SAO PAULO"
    assert parse_emv(fields["62"]) == {"05": "abc123XYZ"}
    assert code.endswith("6304" + fields["63"])
    assert fields["63"] == f"{crc16_ccitt(code[:-4].encode()):04X}"
    assert valid_br_code(code)


def test_known_payload_crc():
    # A payload layout published with the BCB's BR Code manual examples.
    payload = (
        "00020126580014br.gov.bcb.pix0136123e4567-e12b-12d1-a456-4266554400005204000053039865802BR"
        "5913Fulano de Tal6008BRASILIA62070503***6304"
    )
    assert valid_br_code(payload + "1D3D")


def test_one_character_change_breaks_the_crc():
    code = br_code(KEY, "Agora", "Sao Paulo", 12345, "abc123XYZ")
    tampered = code.replace("123.45", "923.45")
    assert tampered != code
    assert not valid_br_code(tampered)
    assert not valid_br_code(code[:-1] + ("0" if code[-1] != "0" else "1"))
    assert not valid_br_code(code[:-4] + code[-4:].lower().replace("a", "x"))
    assert not valid_br_code(code[:-8])
    assert not valid_br_code("")
    assert not valid_br_code("garbage")


@pytest.mark.parametrize(
    ("minor", "text"), [(1, "0.01"), (10, "0.10"), (100, "1.00"), (123456, "1234.56")]
)
def test_amount_formatting(minor, text):
    assert format_amount(minor) == text
    assert parse_emv(br_code(KEY, "A", "B", minor, "t1"))["54"] == text


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "100", 10**13])
def test_bad_amounts_refused(bad):
    with pytest.raises(ValueError):
        br_code(KEY, "A", "B", bad, "t1")


def test_name_and_city_are_folded_and_truncated():
    code = br_code(KEY, "Loja São João das Maçãs e Pêssegos Ltda", "São José dos Campos", 1, "t1")
    fields = parse_emv(code)
    assert fields["59"] == "LOJA SAO JOAO DAS MACAS E"
    assert len(fields["59"]) == 25
    assert fields["60"] == "SAO JOSE DOS CA"
    assert len(fields["60"]) == 15
    assert valid_br_code(code)


def test_truncation_does_not_leave_a_trailing_space():
    fields = parse_emv(br_code(KEY, "Agora", "Rio de Janeiro X", 1, "t1"))
    assert fields["60"] == "RIO DE JANEIRO"


@pytest.mark.parametrize("txid", ["", "a" * 26, "abc-123", "ação", "a b"])
def test_bad_txids_refused(txid):
    with pytest.raises(ValueError):
        br_code(KEY, "Agora", "Sao Paulo", 100, txid)


@pytest.mark.parametrize(("name", "city"), [("", "X"), ("X", "   "), ("日本", "X")])
def test_empty_name_or_city_refused(name, city):
    with pytest.raises(ValueError):
        br_code(KEY, name, city, 100, "t1")


def test_bad_keys_refused():
    for key in ("", "chave-com-ç", "x" * 78):
        with pytest.raises(ValueError):
            br_code(key, "Agora", "Sao Paulo", 100, "t1")


@pytest.mark.parametrize("payload", ["0", "000", "00020", "0002010002", "xx0201"])
def test_parse_emv_refuses_malformed(payload):
    with pytest.raises(ValueError):
        parse_emv(payload)
