# micropython: run
"""IKEv1 (RFC 2408/2409) and IKEv2 (RFC 7296) parsing (passthrough.proto.ike) on hand-built bytes."""
import struct

from passthrough.proto import ike
from passthrough.proto.decode import decode_ip

SPI_I = bytes.fromhex("0123456789abcdef")
SPI_R = bytes.fromhex("fedcba9876543210")
NATD_S = bytes(range(20))
NATD_D = bytes(range(100, 120))


def payloads(items):
    """[(type, body)] -> (first type, chained generic payloads)."""
    out = b""
    for i in range(len(items)):
        nxt = items[i + 1][0] if i + 1 < len(items) else 0
        body = items[i][1]
        out += struct.pack("!BBH", nxt, 0, 4 + len(body)) + body
    return (items[0][0] if items else 0), out


def msg(version, xtype, flags, msgid, items, spi_r=SPI_R, length=None):
    first, body = payloads(items)
    if length is None:
        length = 28 + len(body)
    ver = 0x20 if version == 2 else 0x10
    return struct.pack("!8s8sBBBBII", SPI_I, spi_r, first, ver, xtype, flags, msgid, length) + body


def notify2(ntype, data=b"", spi=b""):
    return (41, struct.pack("!BBH", 0, len(spi), ntype) + spi + data)


def parse(buf, partial=False):
    d = decode_ip(b"\x00")
    d["error"] = None
    err = ike.parse_ike(buf, 0, len(buf), d, partial)
    return d, err


def sa_init_request():
    return msg(2, 34, 0x08, 0, [(33, b"\x00" * 40), (34, b"\x00\x0e\x00\x00" + b"k" * 32),
                               (40, b"n" * 32), notify2(16388, NATD_S), notify2(16389, NATD_D),
                               notify2(16430), (43, b"strongSwan")], spi_r=b"\x00" * 8)


def test_ikev2_sa_init_request():
    d, err = parse(sa_init_request())
    assert err is None
    assert d["ike_version"] == 2 and d["ike_exchange"] == "IKE_SA_INIT"
    assert d["ike_exchange_type"] == 34
    assert d["ike_spi_i"] == "0123456789abcdef" and d["ike_spi_r"] == "0000000000000000"
    assert d["ike_msgid"] == 0
    assert d["ike_initiator"] is True and d["ike_response"] is False
    assert d["ike_payloads"] == ["SA", "KE", "Nonce", "N", "N", "N", "V"]
    assert d["ike_notify"] == ["NAT_DETECTION_SOURCE_IP", "NAT_DETECTION_DESTINATION_IP",
                               "IKEV2_FRAGMENTATION_SUPPORTED"]
    assert d["ike_nat_d"] == ["000102030405060708090a0b0c0d0e0f10111213",
                              "6465666768696a6b6c6d6e6f7071727374757677"]
    assert d["ike_vendor_ids"] == ["7374726f6e675377616e"]


def test_ikev2_response_flags_and_msgid():
    d, err = parse(msg(2, 35, 0x20, 1, [(46, b"\x00" * 48)]))
    assert err is None
    assert d["ike_exchange"] == "IKE_AUTH" and d["ike_msgid"] == 1
    assert d["ike_initiator"] is False and d["ike_response"] is True
    d, err = parse(msg(2, 37, 0x28, 0xFFFFFFFF, []))
    assert err is None and d["ike_initiator"] and d["ike_response"]
    assert d["ike_msgid"] == 0xFFFFFFFF and d["ike_payloads"] == []


def test_ikev2_sk_stops_the_walk():
    # SK's next-payload names the first inner payload; its body is ciphertext and must not be
    # read as a payload chain even when it happens to look like one.
    sk_body = struct.pack("!BBH", 41, 0, 4) + b"\xff" * 20
    buf = msg(2, 36, 0x08, 5, [(46, sk_body)])
    buf = buf[:16] + b"\x2e" + buf[17:]
    d, err = parse(buf)
    assert err is None and d["ike_payloads"] == ["SK"] and d["ike_notify"] == []
    d, err = parse(msg(2, 35, 0x08, 1, [(53, b"\x00\x01\x00\x03" + b"x" * 40)]))
    assert err is None and d["ike_payloads"] == ["SKF"]


def test_ikev2_exchange_names():
    names = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL",
             38: "IKE_SESSION_RESUME", 43: "IKE_INTERMEDIATE", 44: "IKE_FOLLOWUP_KE",
             99: "unknown(99)"}
    for xt in names:
        d, err = parse(msg(2, xt, 0x08, 0, []))
        assert err is None and d["ike_exchange"] == names[xt], xt


def test_ikev1_exchange_names():
    names = {2: "Identity Protection (Main Mode)", 4: "Aggressive", 5: "Informational",
             32: "Quick Mode", 33: "New Group Mode", 6: "Transaction (Config Mode)",
             1: "Base", 3: "Authentication Only", 200: "unknown(200)"}
    for xt in names:
        d, err = parse(msg(1, xt, 0, 0, []))
        assert err is None and d["ike_exchange"] == names[xt], xt
        assert d["ike_version"] == 1
        assert d["ike_initiator"] is None and d["ike_response"] is None


def test_ikev1_main_mode_natd_and_vids():
    rfc3947 = bytes.fromhex("4a131c81070358455c5728f20e95452f")
    dpd = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")
    buf = msg(1, 2, 0, 0, [(4, b"k" * 128), (10, b"n" * 16), (20, NATD_S), (20, NATD_D),
                           (13, rfc3947), (13, dpd)])
    d, err = parse(buf)
    assert err is None
    assert d["ike_payloads"] == ["KE", "NONCE", "NAT-D", "NAT-D", "VID", "VID"]
    assert d["ike_nat_d"] == ["000102030405060708090a0b0c0d0e0f10111213",
                              "6465666768696a6b6c6d6e6f7071727374757677"]
    assert d["ike_vendor_ids"] == ["4a131c81070358455c5728f20e95452f",
                                   "afcad71368a1f1c96b8696fc77570100"]


def test_ikev1_draft_natd_130():
    d, err = parse(msg(1, 4, 0, 0, [(1, b"\x00" * 12), (130, NATD_S), (131, b"\x01\x00\x00\x00")]))
    assert err is None
    assert d["ike_payloads"] == ["SA", "NAT-D", "NAT-OA"]
    assert d["ike_nat_d"] == ["000102030405060708090a0b0c0d0e0f10111213"]


def test_ikev1_encrypted_flag_stops_the_walk():
    buf = msg(1, 32, 0x01, 0x6A09E667, [(8, b"\x99" * 20), (1, b"\x77" * 30)])
    d, err = parse(buf)
    assert err is None
    assert d["ike_exchange"] == "Quick Mode" and d["ike_msgid"] == 0x6A09E667
    assert d["ike_payloads"] == ["encrypted"] and d["ike_flags"] == 1


def test_ikev1_notify_dpd():
    body = struct.pack("!IBBH", 1, 1, 16, 36136) + b"c" * 16 + b"\x00\x00\x00\x07"
    d, err = parse(msg(1, 5, 0, 0x11223344, [(8, b"h" * 20), (11, body)]))
    assert err is None and d["ike_notify"] == ["R-U-THERE"]
    assert d["ike_payloads"] == ["HASH", "N"]


def test_notify_bad_spi_size():
    d, err = parse(msg(2, 37, 0, 0, [(41, struct.pack("!BBH", 3, 8, 11) + b"\x00\x00")]))
    assert err == "bad IKE notify SPI size 8"
    d, err = parse(msg(1, 5, 0, 0, [(11, struct.pack("!IBBH", 1, 1, 16, 1))]))
    assert err == "bad IKE notify SPI size 16"
    d, err = parse(msg(2, 37, 0, 0, [(41, b"\x00")]))
    assert err == "truncated IKE notify payload"


def test_unknown_payload_type_is_named():
    d, err = parse(msg(2, 37, 0, 0, [(200, b"zz")]))
    assert err is None and d["ike_payloads"] == ["unknown(200)"]


def test_bad_version():
    buf = bytearray(msg(2, 34, 0, 0, []))
    buf[17] = 0x30
    d, err = parse(bytes(buf))
    assert err == "unknown IKE version 3.0" and d["ike_spi_i"] is None


def test_bad_lengths():
    d, err = parse(msg(2, 34, 0, 0, [], length=20))
    assert err == "bad IKE length 20" and d["ike_exchange"] == "IKE_SA_INIT"
    d, err = parse(msg(2, 34, 0, 0, [], length=60))
    assert err == "truncated IKE message (28 of 60 bytes)"
    buf = bytearray(msg(2, 34, 0, 0, [(33, b"x" * 8), (34, b"y" * 8)]))
    buf[28 + 3] = 2  # SA length 2 < generic header
    d, err = parse(bytes(buf))
    assert err == "bad IKE payload length 2" and d["ike_payloads"] == ["SA"]
    buf[28 + 3] = 200  # runs past the message
    d, err = parse(bytes(buf))
    assert err == "bad IKE payload length 200"
    # next-payload says more follows but the message ends
    buf = msg(2, 34, 0, 0, [(33, b"x" * 8)])
    buf = buf[:28] + b"\x22" + buf[29:]
    d, err = parse(buf)
    assert err == "truncated IKE payload header" and d["ike_payloads"] == ["SA"]


def test_trailing_bytes_after_message_are_ignored():
    d, err = parse(sa_init_request() + b"\xde\xad")
    assert err is None and d["ike_payloads"][-1] == "V"


def test_every_truncation_is_an_error():
    full = sa_init_request()
    for n in range(len(full)):
        d, err = parse(full[:n])
        assert err is not None, n


def test_partial_first_fragment_keeps_the_header():
    full = sa_init_request()
    d, err = parse(full[:120], partial=True)
    assert err is None
    assert d["ike_spi_i"] == "0123456789abcdef" and d["ike_exchange"] == "IKE_SA_INIT"
    assert d["ike_payloads"][:2] == ["SA", "KE"]


def test_names_helpers():
    assert ike.exchange_name(2, 34) == "IKE_SA_INIT"
    assert ike.payload_name(1, 20) == "NAT-D" and ike.payload_name(2, 41) == "N"
    assert ike.notify_name(2, 16389) == "NAT_DETECTION_DESTINATION_IP"
    assert ike.notify_name(1, 7) == "unknown(7)"
