"""How the embedded PSP keeps its store: the setting's values and the default."""

import pytest

from cluster.localstripe_server import persist_mode


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (None, "interval"),
        ("", "interval"),
        ("0", "memory"),
        ("off", "memory"),
        ("1", "write"),
        ("WRITE", "write"),
        ("interval", "interval"),
    ],
)
def test_persist_modes(value, mode):
    assert persist_mode(value) == mode


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="AGORA_PSP_PERSIST"):
        persist_mode("sometimes")
