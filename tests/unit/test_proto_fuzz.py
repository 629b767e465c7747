"""Property tests: decode_ip() and the pcap reader never raise, whatever the bytes."""
import io
import os
import struct
import sys

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from passthrough.pcap import PcapReader  # noqa: E402
from passthrough.proto.decode import KEYS, decode_ip  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_proto_decode import SAMPLES  # noqa: E402

FUZZ = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(d):
    assert sorted(d) == KEYS
    assert d["error"] is None or isinstance(d["error"], str)
    assert d["error"] is None or not d["error"].startswith("internal"), d["error"]
    assert d["proto"] in ("ike", "natt-keepalive", "esp", "l2tp", "other")


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(data):
    check(decode_ip(data))


def ip4_udp(sport, dport, payload):
    return struct.pack("!BBHHHBBH4s4sHHHH", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                       b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", sport, dport,
                       8 + len(payload), 0) + payload


@FUZZ
@given(st.sampled_from([500, 4500, 1701]), st.integers(0, 65535), st.binary(max_size=300))
def test_random_payload_on_vpn_ports(port, other, payload):
    """Valid IP/UDP around random bytes, so the fuzzing reaches the IKE/NAT-T/L2TP parsers."""
    check(decode_ip(ip4_udp(other, port, payload)))
    check(decode_ip(ip4_udp(other, port, b"\x00\x00\x00\x00" + payload)))
    check(decode_ip(ip4_udp(port, other, b"\xc8\x02" + payload)))


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from([s[1] for s in SAMPLES])))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["set", "cut", "insert", "delete"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i:i + draw(st.integers(1, 8))]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_valid_packets(data):
    check(decode_ip(data))


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\n\r\r\n", b""]),
       st.binary(max_size=400))
def test_pcap_reader_on_random_bytes(head, rest):
    r = PcapReader(io.BytesIO(head + rest))
    for ts, ip, err in r:
        assert ip is None or isinstance(ip, bytes)
        assert err is None or isinstance(err, str)
        if ip is not None:
            check(decode_ip(ip))
    assert r.error is None or isinstance(r.error, str)
