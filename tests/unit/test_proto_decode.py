# micropython: run
"""decode_ip(): the contract the daemon codes against (keys, dispatch by port/protocol, no raising)."""
import struct

from passthrough.proto.decode import KEYS, decode_ip

SRC4 = bytes([10, 0, 0, 2])
DST4 = bytes([203, 0, 113, 9])


def ip4(proto, payload):
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                       SRC4, DST4) + payload


def ip6(nh, payload):
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64,
                       b"\xfe\x80" + b"\x00" * 13 + b"\x01", b"\xfe\x80" + b"\x00" * 13 + b"\x02") + payload


def udp(sport, dport, payload):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ike2(xtype=34, flags=0x08, msgid=0, body=b""):
    return struct.pack("!8s8sBBBBII", b"\xab" * 8, b"\x00" * 8, 43 if body else 0, 0x20, xtype,
                       flags, msgid, 28 + len(body)) + body


def vid(data):
    return struct.pack("!BBH", 0, 0, 4 + len(data)) + data


def l2tp_sccrq():
    avps = struct.pack("!HHHH", 0x8008, 0, 0, 1) + struct.pack("!HHHH", 0x8008, 0, 9, 0x4321)
    return struct.pack("!HHHHHH", 0xC802, 12 + len(avps), 0, 0, 0, 0) + avps


SAMPLES = [
    ("ike", ip4(17, udp(500, 500, ike2(body=vid(b"v" * 16))))),
    ("ike", ip4(17, udp(4500, 4500, b"\x00\x00\x00\x00" + ike2(35, 0x20, 1)))),
    ("natt-keepalive", ip4(17, udp(4500, 4500, b"\xff"))),
    ("esp", ip4(17, udp(4500, 4500, struct.pack("!II", 0xC0FFEE01, 5) + b"\x00" * 24))),
    ("esp", ip4(50, struct.pack("!II", 0x12345678, 1) + b"\x00" * 24)),
    ("l2tp", ip4(17, udp(1701, 1701, l2tp_sccrq()))),
    ("l2tp", ip4(115, b"\x00\x00\x00\x00" + struct.pack("!HHIHH", 0xC803, 12, 7, 0, 0))),
    ("ike", ip6(17, udp(500, 500, ike2(37, 0x20, 9)))),
    ("esp", ip6(50, struct.pack("!II", 0xFFFFFFFF, 0xFFFFFFFF))),
    ("l2tp", ip6(17, udp(1701, 40000, struct.pack("!HHH", 0x0002, 3, 4) + b"\xff\x03"))),
    ("other", ip4(17, udp(53, 53, b"dns"))),
    ("other", ip4(1, b"\x08\x00\x00\x00\x00\x00\x00\x00")),
]


def test_every_key_always_present():
    for data in [b"", b"\x45", b"\x60" + b"\x00" * 10, b"garbage"] + [s[1] for s in SAMPLES]:
        d = decode_ip(data)
        assert sorted(d) == KEYS
    assert "error" in KEYS and "l2tp_hidden" in KEYS and "ike_natt" in KEYS


def test_samples_decode_cleanly():
    for proto, data in SAMPLES:
        d = decode_ip(data)
        assert d["error"] is None, (proto, d["error"])
        assert d["proto"] == proto, (proto, d["proto"])


def test_ike_on_500():
    d = decode_ip(SAMPLES[0][1])
    assert d["ipver"] == 4 and d["src"] == "10.0.0.2" and d["dst"] == "203.0.113.9"
    assert d["l4"] == 17 and d["sport"] == 500 and d["dport"] == 500
    assert d["ike_version"] == 2 and d["ike_exchange"] == "IKE_SA_INIT"
    assert d["ike_spi_i"] == "abababababababab" and d["ike_natt"] is False
    assert d["ike_vendor_ids"] == ["76" * 16] and d["ike_payloads"] == ["V"]
    assert d["esp_spi"] is None and d["l2tp_type"] is None


def test_ike_after_non_esp_marker():
    d = decode_ip(SAMPLES[1][1])
    assert d["ike_natt"] is True and d["ike_exchange"] == "IKE_AUTH"
    assert d["ike_response"] is True and d["ike_initiator"] is False and d["ike_msgid"] == 1


def test_esp_in_udp_and_raw():
    d = decode_ip(SAMPLES[3][1])
    assert d["esp_spi"] == "c0ffee01" and d["esp_seq"] == 5 and d["esp_udp"] is True
    d = decode_ip(SAMPLES[4][1])
    assert d["esp_spi"] == "12345678" and d["esp_udp"] is False and d["sport"] is None
    d = decode_ip(SAMPLES[8][1])
    assert d["esp_spi"] == "ffffffff" and d["esp_seq"] == 0xFFFFFFFF and d["ipver"] == 6


def test_l2tp_dispatch():
    d = decode_ip(SAMPLES[5][1])
    assert d["l2tp_type"] == "SCCRQ" and d["l2tp_assigned_tunnel"] == 0x4321
    assert d["l2tp_hidden"] is False and d["l2tp_version"] == 2
    d = decode_ip(SAMPLES[6][1])
    assert d["l2tp_version"] == 3 and d["l2tp_type"] == "ZLB" and d["l2tp_tunnel"] == 7
    d = decode_ip(SAMPLES[9][1])  # server answering from another port: either side 1701
    assert d["l2tp_type"] == "data" and d["l2tp_tunnel"] == 3 and d["l2tp_session"] == 4


def test_port_precedence_either_side():
    d = decode_ip(ip4(17, udp(33000, 500, ike2())))
    assert d["proto"] == "ike"
    d = decode_ip(ip4(17, udp(4500, 61000, b"\xff")))
    assert d["proto"] == "natt-keepalive"
    d = decode_ip(ip4(17, udp(500, 4500, ike2())))  # 500 wins, as specified
    assert d["proto"] == "ike" and d["ike_natt"] is False


def test_error_keeps_earlier_fields():
    d = decode_ip(ip4(17, udp(500, 500, b"\x01" * 10)))
    assert d["error"] == "truncated IKE header"
    assert d["proto"] == "ike" and d["sport"] == 500 and d["src"] == "10.0.0.2"


def test_every_truncation_of_every_sample():
    for proto, data in SAMPLES:
        for n in range(len(data)):
            d = decode_ip(data[:n])
            assert d["error"] is not None, (proto, n)
            assert not d["error"].startswith("internal"), d["error"]


def test_every_single_byte_mutation_never_raises():
    for proto, data in SAMPLES:
        buf = bytearray(data)
        for i in range(len(buf)):
            keep = buf[i]
            for v in (0x00, 0xFF, keep ^ 0x80, keep ^ 0x01):
                buf[i] = v
                d = decode_ip(bytes(buf))
                assert d["error"] is None or not d["error"].startswith("internal"), d["error"]
            buf[i] = keep


def test_accepts_bytearray_and_memoryview():
    data = SAMPLES[0][1]
    for obj in (bytearray(data), memoryview(data)):
        d = decode_ip(obj)
        assert d["error"] is None and d["ike_spi_i"] == "abababababababab"
