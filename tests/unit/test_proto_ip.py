# micropython: run
"""IPv4/IPv6/UDP/TCP header parsing (passthrough.proto.ip) on hand-built bytes."""
import struct

from passthrough.proto import ip
from passthrough.proto.decode import decode_ip

SRC4 = bytes([192, 0, 2, 1])
DST4 = bytes([198, 51, 100, 7])
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000100000000000000000abc")


def ip4(proto, payload, options=b"", frag_word=0, total=None):
    hlen = 20 + len(options)
    if total is None:
        total = hlen + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | (hlen // 4), 0, total, 0x1234, frag_word, 64,
                      proto, 0, SRC4, DST4)
    return hdr + options + payload


def ip6(nh, payload, plen=None):
    if plen is None:
        plen = len(payload)
    return struct.pack("!IHBB16s16s", 0x60000000, plen, nh, 64, SRC6, DST6) + payload


def udp(sport, dport, payload, length=None):
    if length is None:
        length = 8 + len(payload)
    return struct.pack("!HHHH", sport, dport, length, 0) + payload


def new():
    return decode_ip(b"\x00")  # a dict with every key at its default (plus an error)


def test_ipv4_basic():
    pkt = ip4(17, udp(1234, 53, b"abc"))
    d = new()
    off, end, err = ip.parse_ipv4(pkt, d)
    assert err is None
    assert (off, end) == (20, len(pkt))
    assert d["ipver"] == 4 and d["src"] == "192.0.2.1" and d["dst"] == "198.51.100.7"
    assert d["l4"] == 17 and d["ttl"] == 64 and d["frag"] is False


def test_ipv4_trailing_padding_is_trimmed():
    pkt = ip4(17, udp(1, 2, b"")) + b"\x00" * 18  # Ethernet minimum-size padding
    d = new()
    off, end, err = ip.parse_ipv4(pkt, d)
    assert err is None and end == 28


def test_ipv4_options_walk():
    opts = b"\x01" + b"\x07\x07\x04\x00\x00\x00\x00" + b"\x00" * 4  # NOP, RR(len 7), EOL pad
    pkt = ip4(17, udp(1, 2, b"x"), options=opts)
    d = new()
    off, end, err = ip.parse_ipv4(pkt, d)
    assert err is None and off == 32
    assert d["ip_options"] == [7]


def test_ipv4_bad_option_length():
    opts = b"\x07\x09\x04\x00" + b"\x00" * 4  # length 9 runs past the 8-byte option area
    d = new()
    off, end, err = ip.parse_ipv4(ip4(17, udp(1, 2, b""), options=opts), d)
    assert err == "bad IPv4 option length 9 (option 7)"
    opts = b"\x01\x01\x01\x83"  # option 131 with no length octet
    off, end, err = ip.parse_ipv4(ip4(17, udp(1, 2, b""), options=opts), new())
    assert err == "truncated IPv4 option 131"


def test_ipv4_bad_ihl_and_total_length():
    pkt = bytearray(ip4(17, udp(1, 2, b"")))
    pkt[0] = 0x44
    assert ip.parse_ipv4(bytes(pkt), new())[2] == "bad IPv4 header length 16"
    pkt = ip4(17, udp(1, 2, b""), total=10)
    assert ip.parse_ipv4(pkt, new())[2] == "bad IPv4 total length 10"
    pkt = ip4(17, udp(1, 2, b""), total=100)
    assert ip.parse_ipv4(pkt, new())[2] == "truncated IPv4 packet (28 of 100 bytes)"


def test_ipv4_zero_total_length_means_whole_buffer():
    pkt = ip4(17, udp(1, 2, b"abcd"), total=0)
    off, end, err = ip.parse_ipv4(pkt, new())
    assert err is None and end == len(pkt)


def test_ipv4_fragments():
    d = decode_ip(ip4(17, udp(500, 500, b"\x00" * 30, length=3000), frag_word=0x2000))
    assert d["frag"] is True and d["frag_offset"] == 0
    assert d["sport"] == 500 and d["dport"] == 500
    d = decode_ip(ip4(17, b"\x11" * 40, frag_word=185))
    assert d["frag"] is True and d["frag_offset"] == 1480
    assert d["sport"] is None and d["proto"] == "other" and d["error"] is None
    d = decode_ip(ip4(17, udp(1, 2, b""), frag_word=0x4000))  # DF only
    assert d["frag"] is False


def test_ipv4_every_truncation_is_an_error():
    pkt = ip4(17, udp(1, 2, b"hello"), options=b"\x01\x01\x01\x00")
    for n in range(len(pkt)):
        off, end, err = ip.parse_ipv4(pkt[:n], new())
        assert err is not None, n


def test_ipv6_basic():
    pkt = ip6(17, udp(4500, 4500, b"\xff"))
    d = new()
    off, end, err = ip.parse_ipv6(pkt, d)
    assert err is None and (off, end) == (40, len(pkt))
    assert d["ipver"] == 6 and d["src"] == "2001:db8::1" and d["dst"] == "2001:db8:1::abc"
    assert d["l4"] == 17 and d["ip6_ext"] == []


def test_ipv6_extension_header_walk():
    hbh = struct.pack("!BB", 60, 0) + b"\x01\x04\x00\x00\x00\x00"  # -> dstopts, PadN
    dst = struct.pack("!BB", 43, 1) + b"\x00" * 14  # 16 bytes -> routing
    rt = struct.pack("!BBBB", 44, 0, 0, 0) + b"\x00" * 4  # -> fragment
    fr = struct.pack("!BBHI", 17, 0, 0, 0xABCD)  # atomic fragment -> UDP
    pkt = ip6(0, hbh + dst + rt + fr + udp(500, 500, b""))
    d = new()
    off, end, err = ip.parse_ipv6(pkt, d)
    assert err is None
    assert d["ip6_ext"] == [0, 60, 43, 44]
    assert d["l4"] == 17 and off == 40 + 8 + 16 + 8 + 8
    assert d["frag"] is False  # offset 0 and M clear: an atomic fragment


def test_ipv6_fragments():
    fr = struct.pack("!BBHI", 50, 0, 0x0001, 7)  # first fragment, M set, then ESP
    d = decode_ip(ip6(44, fr + struct.pack("!II", 0x01020304, 9)))
    assert d["frag"] is True and d["l4"] == 50 and d["proto"] == "esp"
    assert d["esp_spi"] == "01020304"
    fr = struct.pack("!BBHI", 17, 0, 1480, 7)  # later fragment
    d = decode_ip(ip6(44, fr + b"\x00" * 16))
    assert d["frag"] is True and d["frag_offset"] == 1480 and d["l4"] == 17
    assert d["sport"] is None and d["error"] is None


def test_ipv6_ah_is_terminal():
    d = decode_ip(ip6(51, b"\x32\x04" + b"\x00" * 22))
    assert d["l4"] == 51 and d["proto"] == "other"


def test_ipv6_truncations():
    pkt = ip6(0, struct.pack("!BB", 17, 0) + b"\x00" * 6 + udp(1, 2, b"x"))
    for n in range(len(pkt)):
        off, end, err = ip.parse_ipv6(pkt[:n], new())
        assert err is not None, n
    bad = ip6(0, struct.pack("!BB", 17, 5) + b"\x00" * 6)  # claims 48 bytes, has 8
    assert ip.parse_ipv6(bad, new())[2] == "truncated IPv6 extension header 0"


def test_udp():
    d = new()
    d["ipver"] = 4
    buf = udp(500, 4500, b"abcdef") + b"pad"
    off, end, err = ip.parse_udp(buf, 0, len(buf), d, False)
    assert err is None and (off, end) == (8, 14)
    assert d["sport"] == 500 and d["dport"] == 4500
    assert ip.parse_udp(udp(1, 2, b"", length=7), 0, 8, d, False)[2] == "bad UDP length 7"
    buf = udp(1, 2, b"ab", length=20)
    assert ip.parse_udp(buf, 0, len(buf), d, False)[2] == "truncated UDP datagram (10 of 20 bytes)"
    assert ip.parse_udp(buf, 0, len(buf), d, True) == (8, 10, None)
    assert ip.parse_udp(buf, 0, 5, d, False)[2] == "truncated UDP header"


def test_tcp_ports():
    seg = struct.pack("!HHIIHHHH", 40000, 1723, 1, 0, 0x5002, 1024, 0, 0)
    d = decode_ip(ip4(6, seg))
    assert d["error"] is None and d["sport"] == 40000 and d["dport"] == 1723
    assert d["proto"] == "other"
    d = decode_ip(ip4(6, seg[:10]))
    assert d["error"] == "truncated TCP header" and d["dport"] == 1723


def test_not_ip():
    assert decode_ip(b"")["error"] == "empty packet"
    assert decode_ip(b"\x50" * 30)["error"] == "not an IP packet (version 5)"
