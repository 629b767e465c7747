"""Pure reader for classic pcap and pcapng captures, down to the IP header.

    reader = PcapReader(open(path, "rb"))
    for ts, ip, err in reader: ...      # ts: float seconds or None; ip: bytes or None
    if reader.error: ...                # a file-level problem stopped the reading

Classic pcap: both byte orders, microsecond and nanosecond magic. pcapng: SHB, IDB (with
if_tsresol / if_tsoffset), EPB, SPB and the obsolete PB; other blocks are skipped. Link types:
Ethernet with VLAN/QinQ tags and PPPoE sessions, raw IP (101, 228, 229), Linux SLL and SLL2,
BSD null/loop. Runs under MicroPython too (streams with f.read(n), no exceptions escape).
"""
import struct

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D

BLOCK_IDB = 1
BLOCK_PB = 2  # obsolete Packet Block
BLOCK_SPB = 3
BLOCK_EPB = 6

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
ETH_PPPOE_SESSION = 0x8864
PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057

# BSD address families of the null/loop header: AF_INET is 2 everywhere, AF_INET6 is not.
AF_INET = 2
AF_INET6 = (10, 24, 28, 30)

MAX_RECORD = 0x4000000  # 64 MiB: anything larger is a corrupt length field, not a packet


def _ip_version_check(data, off):
    if off >= len(data):
        return None, "truncated frame (no IP header)"
    v = data[off] >> 4
    if v != 4 and v != 6:
        return None, "not an IP packet (version %d)" % v
    return data[off:], None


def _ethertype_to_ip(data, off, etype):
    if etype == ETH_IPV4 or etype == ETH_IPV6:
        return _ip_version_check(data, off)
    return None, "not an IP packet (ethertype 0x%04x)" % etype


def link_to_ip(linktype, frame):
    """Strip the link-layer header; return (ip_bytes, None) or (None, error)."""
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return None, "truncated Ethernet header"
        etype = (frame[12] << 8) | frame[13]
        off = 14
        while etype in ETH_VLAN_TAGS:
            if off + 4 > n:
                return None, "truncated VLAN tag"
            etype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
        if etype == ETH_PPPOE_SESSION:
            # ver/type, code, session id, length (RFC 2516), then the PPP protocol field
            if off + 8 > n:
                return None, "truncated PPPoE header"
            proto = (frame[off + 6] << 8) | frame[off + 7]
            if proto != PPP_IPV4 and proto != PPP_IPV6:
                return None, "not an IP packet (PPP protocol 0x%04x)" % proto
            return _ip_version_check(frame, off + 8)
        if etype <= 1500:
            return None, "not an IP packet (802.3 length field)"
        return _ethertype_to_ip(frame, off, etype)
    if linktype == LINKTYPE_RAW or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6:
        return _ip_version_check(frame, 0)
    if linktype == LINKTYPE_LINUX_SLL:
        # packet type, ARPHRD, address length, address (8), protocol
        if n < 16:
            return None, "truncated Linux cooked header"
        return _ethertype_to_ip(frame, 16, (frame[14] << 8) | frame[15])
    if linktype == LINKTYPE_LINUX_SLL2:
        # protocol, reserved, ifindex, ARPHRD, packet type, address length, address (8)
        if n < 20:
            return None, "truncated Linux cooked v2 header"
        return _ethertype_to_ip(frame, 20, (frame[0] << 8) | frame[1])
    if linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        if n < 4:
            return None, "truncated loopback header"
        # NULL stores the family in the capturing host's byte order, LOOP in network order
        le = struct.unpack_from("<I", frame, 0)[0]
        be = struct.unpack_from(">I", frame, 0)[0]
        af = le if le < be else be
        if af != AF_INET and af not in AF_INET6:
            return None, "not an IP packet (address family %d)" % af
        return _ip_version_check(frame, 4)
    return None, "unsupported link type %d" % linktype


class PcapReader:
    """Iterable of (timestamp, ip_bytes or None, error) over a capture file object."""

    def __init__(self, f):
        self.f = f
        self.error = None  # set when a file-level problem ends the iteration
        self.format = None  # "pcap" or "pcapng"
        self.linktypes = []  # one per interface (pcapng) or the single file link type
        self.count = 0

    def __iter__(self):
        return self._packets()

    def _read(self, n):
        try:
            b = self.f.read(n)
        except Exception as e:  # OSError, or anything a file-like object may raise
            self.error = "read error: %s" % (e,)
            return b""
        return b if b is not None else b""

    def _packets(self):
        head = self._read(4)
        if self.error:
            return
        if len(head) < 4:
            self.error = "empty or truncated file (no capture header)"
            return
        if head == b"\n\r\r\n":
            self.format = "pcapng"
            gen = self._pcapng(head)
        else:
            gen = self._pcap(head)
        try:
            for item in gen:
                self.count += 1
                yield item
        except Exception as e:  # a reader bug must end the file cleanly, not the caller
            self.error = "internal reader error: %s" % (e,)

    # -- classic pcap ------------------------------------------------------------------------

    def _pcap(self, head):
        magic_le = struct.unpack_from("<I", head, 0)[0]
        magic_be = struct.unpack_from(">I", head, 0)[0]
        if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            e, magic = "<", magic_le
        elif magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            e, magic = ">", magic_be
        else:
            self.error = "not a pcap or pcapng file (magic %02x%02x%02x%02x)" % (
                head[0], head[1], head[2], head[3])
            return
        self.format = "pcap"
        rest = self._read(20)
        if len(rest) < 20:
            self.error = self.error or "truncated pcap file header"
            return
        # version major/minor, thiszone, sigfigs, snaplen, link type (+ FCS bits above 16)
        network = struct.unpack_from(e + "I", rest, 16)[0]
        linktype = network & 0xFFFF
        self.linktypes.append(linktype)
        div = 1000000000 if magic == PCAP_MAGIC_NS else 1000000
        rec_fmt = e + "IIII"
        while True:
            hdr = self._read(16)
            if not hdr:
                return
            if len(hdr) < 16:
                self.error = self.error or "truncated pcap record header"
                return
            sec, frac, incl, orig = struct.unpack_from(rec_fmt, hdr, 0)
            if incl > MAX_RECORD:
                self.error = "bad pcap record length %d" % incl
                return
            data = self._read(incl)
            if len(data) < incl:
                self.error = self.error or "truncated pcap record (%d of %d bytes)" % (len(data), incl)
                return
            ip, err = link_to_ip(linktype, data)
            yield sec + frac / div, ip, err

    # -- pcapng ------------------------------------------------------------------------------

    def _pcapng(self, head):
        e = "<"
        ifaces = []  # (linktype, snaplen, divisor, offset)
        first = True
        while True:
            if first:
                hdr = head + self._read(4)
                first = False
            else:
                hdr = self._read(8)
            if not hdr:
                return
            if len(hdr) < 8:
                self.error = self.error or "truncated pcapng block header"
                return
            if hdr[0:4] == b"\n\r\r\n":
                bom = self._read(4)
                if bom == b"\x1a\x2b\x3c\x4d":
                    e = ">"
                elif bom == b"\x4d\x3c\x2b\x1a":
                    e = "<"
                else:
                    self.error = self.error or "bad pcapng byte-order magic"
                    return
                blen = struct.unpack_from(e + "I", hdr, 4)[0]
                if blen < 28 or blen % 4 or blen > MAX_RECORD:
                    self.error = "bad pcapng section header length %d" % blen
                    return
                body = self._read(blen - 12)
                if len(body) < blen - 12:
                    self.error = self.error or "truncated pcapng section header"
                    return
                ifaces = []  # interface IDs are per section
                self.linktypes = []
                continue
            btype, blen = struct.unpack_from(e + "II", hdr, 0)
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                self.error = "bad pcapng block length %d (block type %d)" % (blen, btype)
                return
            body = self._read(blen - 8)
            if len(body) < blen - 8:
                self.error = self.error or "truncated pcapng block (type %d)" % btype
                return
            if struct.unpack_from(e + "I", body, blen - 12)[0] != blen:
                self.error = "bad pcapng block trailer (type %d)" % btype
                return
            blen -= 12  # body length without the trailing length copy
            if btype == BLOCK_IDB:
                if blen < 8:
                    self.error = "truncated pcapng interface description"
                    return
                linktype, snaplen = struct.unpack_from(e + "H2xI", body, 0)
                div, tsoff = _idb_options(body, 8, blen, e)
                ifaces.append((linktype, snaplen, div, tsoff))
                self.linktypes.append(linktype)
            elif btype == BLOCK_EPB or btype == BLOCK_PB:
                if blen < 20:
                    yield None, None, "truncated pcapng packet block"
                    continue
                if btype == BLOCK_EPB:
                    ifid, hi, lo, caplen = struct.unpack_from(e + "IIII", body, 0)
                else:
                    ifid, hi, lo, caplen = struct.unpack_from(e + "H2xIII", body, 0)
                if 20 + caplen > blen:
                    yield None, None, "bad pcapng captured length %d" % caplen
                    continue
                if ifid >= len(ifaces):
                    yield None, None, "packet on undeclared interface %d" % ifid
                    continue
                linktype, snaplen, div, tsoff = ifaces[ifid]
                ip, err = link_to_ip(linktype, body[20:20 + caplen])
                yield ((hi << 32) | lo) / div + tsoff, ip, err
            elif btype == BLOCK_SPB:
                if not ifaces:
                    yield None, None, "packet on undeclared interface 0"
                    continue
                if blen < 4:
                    yield None, None, "truncated pcapng simple packet block"
                    continue
                linktype, snaplen, div, tsoff = ifaces[0]
                caplen = struct.unpack_from(e + "I", body, 0)[0]  # original length
                if snaplen and caplen > snaplen:
                    caplen = snaplen
                if caplen > blen - 4:
                    caplen = blen - 4
                ip, err = link_to_ip(linktype, body[4:4 + caplen])
                yield None, ip, err  # SPBs carry no timestamp


def _idb_options(body, off, end, e):
    """if_tsresol (9) and if_tsoffset (14); returns (divisor, offset seconds)."""
    div = 1000000
    tsoff = 0
    while off + 4 <= end:
        code, olen = struct.unpack_from(e + "HH", body, off)
        off += 4
        if code == 0 or off + olen > end:
            break
        if code == 9 and olen >= 1:
            r = body[off]
            div = (2 ** (r & 0x7F)) if r & 0x80 else (10 ** r)
        elif code == 14 and olen >= 8:
            tsoff = struct.unpack_from(e + "q", body, off)[0]  # signed seconds
        off += (olen + 3) & ~3
    return div, tsoff


def open_pcap(path):
    """Open a capture file; returns (reader, None) or (None, error). Close reader.f when done."""
    try:
        f = open(path, "rb")
    except Exception as e:
        return None, "cannot open %s: %s" % (path, e)
    return PcapReader(f), None
