# micropython: run
"""passthrough.pcap on captures built byte by byte: pcap/pcapng, both byte orders, link types."""
import io
import struct

from passthrough.pcap import PcapReader, link_to_ip

IP4 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, b"\x0a\x00\x00\x01",
                  b"\x0a\x00\x00\x02") + struct.pack("!HHHH", 4500, 4500, 8, 0)
IP6 = struct.pack("!IHBB16s16s", 0x60000000, 0, 59, 64, b"\x00" * 15 + b"\x01", b"\x00" * 15 + b"\x01")
MACS = b"\x02" * 6 + b"\x04" * 6


def pcap(records, linktype=1, e="<", nsec=False):
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in records:
        out += struct.pack(e + "IIII", sec, frac, len(data), len(data)) + data
    return out


def read(blob):
    r = PcapReader(io.BytesIO(blob))
    return r, list(r)


def pad4(b):
    return b + b"\x00" * ((4 - len(b) % 4) % 4)


def block(btype, body, e="<"):
    body = pad4(body)
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e="<"):
    return block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)


def idb(linktype, e="<", options=b""):
    return block(1, struct.pack(e + "HHI", linktype, 0, 0) + options, e)


def option(code, value, e="<"):
    return struct.pack(e + "HH", code, len(value)) + pad4(value)


def epb(ifid, ts, data, e="<"):
    return block(6, struct.pack(e + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(data),
                                len(data)) + data, e)


def test_classic_both_byte_orders_and_resolutions():
    for e in ("<", ">"):
        for nsec in (False, True):
            frac = 500000000 if nsec else 500000
            r, pkts = read(pcap([(1700000000, frac, MACS + b"\x08\x00" + IP4)], e=e, nsec=nsec))
            assert r.error is None and r.format == "pcap" and r.linktypes == [1]
            assert len(pkts) == 1
            ts, ip, err = pkts[0]
            assert err is None and ip == IP4
            assert abs(ts - 1700000000.5) < 1e-6


def test_ethernet_vlan_qinq_pppoe():
    eth = MACS + b"\x81\x00\x00\x05" + b"\x86\xdd" + IP6
    assert link_to_ip(1, eth) == (IP6, None)
    qinq = MACS + b"\x88\xa8\x00\x05" + b"\x81\x00\x00\x06" + b"\x08\x00" + IP4 + b"\x00" * 10
    assert link_to_ip(1, qinq)[0] == IP4 + b"\x00" * 10  # padding left for decode_ip to trim
    pppoe = MACS + b"\x88\x64" + b"\x11\x00\x00\x01\x00\x1e" + b"\x00\x21" + IP4
    assert link_to_ip(1, pppoe) == (IP4, None)
    assert link_to_ip(1, MACS + b"\x88\x64" + b"\x11\x00\x00\x01\x00\x1e" + b"\xc0\x21")[1] == \
        "not an IP packet (PPP protocol 0xc021)"
    assert link_to_ip(1, MACS + b"\x08\x06" + b"\x00" * 28)[1] == "not an IP packet (ethertype 0x0806)"
    assert link_to_ip(1, MACS + b"\x00\x40" + b"\x00" * 64)[1] == "not an IP packet (802.3 length field)"
    assert link_to_ip(1, MACS + b"\x81\x00\x00")[1] == "truncated VLAN tag"
    assert link_to_ip(1, MACS)[1] == "truncated Ethernet header"
    assert link_to_ip(1, MACS + b"\x08\x00")[1] == "truncated frame (no IP header)"
    assert link_to_ip(1, MACS + b"\x08\x00" + b"\x20" * 20)[1] == "not an IP packet (version 2)"


def test_raw_cooked_and_loopback_link_types():
    for lt in (101, 228, 229):
        assert link_to_ip(lt, IP4) == (IP4, None)
        assert link_to_ip(lt, IP6) == (IP6, None)
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 8, 0x0800) + IP4
    assert link_to_ip(113, sll) == (IP4, None)
    assert link_to_ip(113, sll[:15])[1] == "truncated Linux cooked header"
    sll2 = struct.pack("!HHIHBB8s", 0x86DD, 0, 3, 1, 4, 6, b"\x02" * 8) + IP6
    assert link_to_ip(276, sll2) == (IP6, None)
    assert link_to_ip(276, sll2[:19])[1] == "truncated Linux cooked v2 header"
    assert link_to_ip(0, struct.pack("<I", 2) + IP4) == (IP4, None)
    assert link_to_ip(0, struct.pack(">I", 30) + IP6) == (IP6, None)  # Darwin, big-endian host
    assert link_to_ip(108, struct.pack(">I", 24) + IP6) == (IP6, None)
    assert link_to_ip(0, struct.pack("<I", 7) + IP4)[1] == "not an IP packet (address family 7)"
    assert link_to_ip(0, b"\x02")[1] == "truncated loopback header"
    assert link_to_ip(147, IP4)[1] == "unsupported link type 147"


def test_classic_non_ip_frames_are_reported_not_fatal():
    r, pkts = read(pcap([(1, 0, MACS + b"\x08\x06" + b"\x00" * 28), (2, 0, MACS + b"\x08\x00" + IP4)]))
    assert r.error is None and len(pkts) == 2 and r.count == 2
    assert pkts[0][1] is None and pkts[0][2] == "not an IP packet (ethertype 0x0806)"
    assert pkts[1][1] == IP4


def test_classic_file_errors():
    r, pkts = read(b"")
    assert pkts == [] and r.error == "empty or truncated file (no capture header)"
    r, pkts = read(b"root:x:0:0:root:/root:/bin/bash\n")
    assert pkts == [] and r.error == "not a pcap or pcapng file (magic 726f6f74)"
    good = pcap([(1, 0, IP4), (2, 0, IP4)], linktype=101)
    r, pkts = read(good[:20])
    assert pkts == [] and r.error == "truncated pcap file header"
    r, pkts = read(good[:-3])
    assert len(pkts) == 1 and r.error == "truncated pcap record (25 of 28 bytes)"
    r, pkts = read(good[:24 + 16 + 28 + 7])
    assert len(pkts) == 1 and r.error == "truncated pcap record header"
    bad = pcap([], linktype=101) + struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 0)
    r, pkts = read(bad)
    assert pkts == [] and r.error == "bad pcap record length 2147483647"


def test_classic_every_truncation_never_raises():
    good = pcap([(1, 0, MACS + b"\x08\x00" + IP4), (2, 0, IP4)], linktype=1)
    for n in range(len(good)):
        r, pkts = read(good[:n])
        assert r.error is not None or n in (24, 24 + 16 + 42), n


def test_pcapng_little_and_big_endian():
    for e in ("<", ">"):
        blob = (shb(e) + idb(1, e) + epb(0, 1700000000250000, MACS + b"\x08\x00" + IP4, e) +
                block(5, b"\x00" * 12, e) +  # interface statistics: skipped
                idb(101, e, option(9, b"\x09", e) + option(0, b"", e)) +
                epb(1, 1700000000123456789, IP6, e))
        r, pkts = read(blob)
        assert r.error is None and r.format == "pcapng" and r.linktypes == [1, 101]
        assert len(pkts) == 2
        assert pkts[0][1] == IP4 and abs(pkts[0][0] - 1700000000.25) < 1e-6
        assert pkts[1][1] == IP6 and abs(pkts[1][0] - 1700000000.123456789) < 1e-6


def test_pcapng_binary_resolution_and_offset():
    opts = option(9, b"\x8a") + option(14, struct.pack("<q", 100))
    blob = shb() + idb(101, options=opts) + epb(0, 1024 * 5, IP4)
    r, pkts = read(blob)
    assert r.error is None and pkts[0][0] == 105.0


def test_pcapng_simple_and_obsolete_packet_blocks():
    spb = block(3, struct.pack("<I", len(IP4)) + IP4)
    pb = block(2, struct.pack("<HHIIII", 0, 0, 0, 3000000, len(IP6), len(IP6)) + IP6)
    r, pkts = read(shb() + idb(229) + spb + pb)
    assert r.error is None and len(pkts) == 2
    assert pkts[0] == (None, IP4, None)
    assert pkts[1][1] == IP6 and pkts[1][0] == 3.0


def test_pcapng_sections_reset_interfaces():
    blob = shb() + idb(101) + epb(0, 0, IP4) + shb(">") + idb(1, ">") + \
        epb(0, 0, MACS + b"\x86\xdd" + IP6, ">") + epb(1, 0, IP4, ">")
    r, pkts = read(blob)
    assert r.error is None and len(pkts) == 3
    assert pkts[0][1] == IP4 and pkts[1][1] == IP6
    assert pkts[2] == (None, None, "packet on undeclared interface 1")


def test_pcapng_errors():
    good = shb() + idb(101) + epb(0, 0, IP4)
    bad_trailer = good[:-4] + struct.pack("<I", 999)
    r, pkts = read(bad_trailer)
    assert pkts == [] and r.error == "bad pcapng block trailer (type 6)"
    r, pkts = read(shb() + struct.pack("<II", 6, 13) + b"\x00" * 8)
    assert r.error == "bad pcapng block length 13 (block type 6)"
    r, pkts = read(b"\n\r\r\n" + struct.pack("<I", 28) + b"\x11\x22\x33\x44" + b"\x00" * 16)
    assert r.error == "bad pcapng byte-order magic"
    r, pkts = read(shb() + epb(0, 0, IP4))
    assert pkts == [(None, None, "packet on undeclared interface 0")] and r.error is None
    for n in range(len(good)):
        r, pkts = read(good[:n])
        assert r.error is not None or n in (len(shb()), len(shb()) + len(idb(101))), n
