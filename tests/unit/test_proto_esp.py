# micropython: run
"""ESP header (RFC 4303) and the UDP 4500 demux (RFC 3948) on hand-built bytes."""
import struct

from passthrough.proto.decode import decode_ip
from passthrough.proto.esp import parse_esp
from passthrough.proto.natt import parse_natt


def fresh():
    d = decode_ip(b"\x00")
    d["error"] = None
    return d


def ike_v2_header(xtype=37, msgid=3):
    return struct.pack("!8s8sBBBBII", b"\x11" * 8, b"\x22" * 8, 0, 0x20, xtype, 0x08, msgid, 28)


def test_esp_spi_and_seq():
    d = fresh()
    buf = struct.pack("!II", 0xC0FFEE01, 42) + b"\xaa" * 32
    assert parse_esp(buf, 0, len(buf), d, False) is None
    assert d["esp_spi"] == "c0ffee01" and d["esp_seq"] == 42 and d["esp_udp"] is False


def test_esp_spi_is_eight_lowercase_hex_digits():
    d = fresh()
    buf = struct.pack("!II", 0x100, 1)
    parse_esp(buf, 0, 8, d, True)
    assert d["esp_spi"] == "00000100" and d["esp_udp"] is True


def test_esp_truncated_and_reserved_spi():
    for n in range(8):
        d = fresh()
        assert parse_esp(b"\x01" * n, 0, n, d, False) == "truncated ESP header"
        assert d["esp_spi"] is None
    d = fresh()
    assert parse_esp(b"\x00" * 8, 0, 8, d, False) == "reserved ESP SPI 0"


def test_natt_keepalive():
    d = fresh()
    assert parse_natt(b"\xff", 0, 1, d, False) is None
    assert d["proto"] == "natt-keepalive" and d["esp_spi"] is None


def test_natt_non_esp_marker_then_ike():
    buf = b"\x00\x00\x00\x00" + ike_v2_header()
    d = fresh()
    assert parse_natt(buf, 0, len(buf), d, False) is None
    assert d["proto"] == "ike" and d["ike_natt"] is True
    assert d["ike_exchange"] == "INFORMATIONAL" and d["ike_msgid"] == 3
    assert d["ike_spi_i"] == "1111111111111111"


def test_natt_marker_with_truncated_ike():
    buf = b"\x00\x00\x00\x00" + ike_v2_header()[:20]
    d = fresh()
    assert parse_natt(buf, 0, len(buf), d, False) == "truncated IKE header"
    assert d["proto"] == "ike"


def test_natt_esp_in_udp():
    buf = struct.pack("!II", 0xDEADBEEF, 7) + b"\x01" * 40
    d = fresh()
    assert parse_natt(buf, 0, len(buf), d, False) is None
    assert d["proto"] == "esp" and d["esp_udp"] is True
    assert d["esp_spi"] == "deadbeef" and d["esp_seq"] == 7


def test_natt_short_payloads():
    d = fresh()
    assert parse_natt(b"", 0, 0, d, False) == "empty UDP 4500 payload"
    assert d["proto"] == "other"
    for buf in (b"\x00", b"\xfe", b"\xff\xff", b"\x00\x00\x00", b"\x01\x02\x03\x04\x05"):
        d = fresh()
        assert parse_natt(buf, 0, len(buf), d, False) == "truncated ESP header", buf
        assert d["proto"] == "esp"


def test_natt_honours_offsets():
    buf = b"junk" + b"\xff" + b"more"
    d = fresh()
    assert parse_natt(buf, 4, 5, d, False) is None and d["proto"] == "natt-keepalive"
