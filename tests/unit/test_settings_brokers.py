"""--broker and KVS_BROKER: one address or a comma-separated list."""

from __future__ import annotations

import pytest

from kvs.mqtt.broker import Address
from kvs.server.settings import parse_brokers


def test_a_list_in_order_without_repeats() -> None:
    assert parse_brokers("a:1883, b:1884,a:1883,[::1]:1885") == (
        Address("a", 1883),
        Address("b", 1884),
        Address("::1", 1885),
    )
    assert parse_brokers("host") == (Address("host", 1883),)


@pytest.mark.parametrize("text", ["a:1883,", ",a:1883", "a:1883,,b:1883", "a:1883,b:0", "a:x"])
def test_a_bad_list_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="broker address"):
        parse_brokers(text)
