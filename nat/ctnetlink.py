"""Conntrack over ctnetlink for the BPF offload: look an entry up in a zone (its translation),
and refresh the timeout of entries whose packets the offload carries past conntrack.

The conntrack tool cannot refresh: `conntrack -U` refuses --zone (conntrack-tools 1.4.7) and
without it finds only zone 0 entries. An IPCTNL_MSG_CT_NEW without NLM_F_CREATE for an existing
tuple changes that entry (here: its timeout) and fails with ENOENT when there is none. Lookups
(IPCTNL_MSG_CT_GET by original or reply tuple) save the daemon a `conntrack -L` process per zone.
Cutting a family (delete_matching: one dump of the table, every zone, then one
IPCTNL_MSG_CT_DELETE per entry, its original tuple copied from the dump) saves the daemon a
`conntrack -D` process per zone and filter: 18 of them for L2TP with two hosts, 2.7 s in the TCG
guest.
"""
import errno
import os
import socket
import struct

from nat import nfnetlink
from nat.nfnetlink import (NETLINK_NETFILTER, NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLMSG_ERROR,
                           attr as _attr, attrs as _attrs)

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
# enum ctattr_type / ctattr_tuple / ctattr_ip / ctattr_l4proto (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_TIMEOUT, CTA_ZONE = 1, 2, 3, 7, 18
IPS_SEEN_REPLY = 1 << 1
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
IPPROTO_UDP = 17


def _tuple(kind, proto, tup):
    """A CTA_TUPLE_ORIG / CTA_TUPLE_REPLY attribute; tup = (src, dst, sport, dport)."""
    ip = _attr(CTA_IP_V4_SRC, socket.inet_aton(tup[0])) + _attr(CTA_IP_V4_DST, socket.inet_aton(tup[1]))
    l4 = _attr(CTA_PROTO_NUM, struct.pack("B", proto))
    if proto == IPPROTO_UDP:
        l4 += _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", tup[2])) + _attr(CTA_PROTO_DST_PORT, struct.pack("!H", tup[3]))
    return _attr(kind, _attr(CTA_TUPLE_IP, ip, True) + _attr(CTA_TUPLE_PROTO, l4, True), True)


def _msg(mtype, attrs, seq, flags=NLM_F_REQUEST | NLM_F_ACK):
    body = struct.pack("!BBH", socket.AF_INET, 0, 0) + attrs  # nfgenmsg
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | mtype, flags, seq, 0) + body


def dump_msg(seq):
    """Every IPv4 entry, all zones."""
    return _msg(IPCTNL_MSG_CT_GET, b"", seq, NLM_F_REQUEST | NLM_F_DUMP)


def delete_msg(orig_attr, zone, seq):
    """Delete the entry whose CTA_TUPLE_ORIG attribute (bytes, as the dump gave it) this is."""
    return _msg(IPCTNL_MSG_CT_DELETE, orig_attr + b"\0" * ((-len(orig_attr)) % 4)
                + _attr(CTA_ZONE, struct.pack("!H", zone)), seq)


def set_timeout_msg(proto, orig, zone, timeout, seq):
    """The request: orig = (src, dst, sport, dport) of the entry's original direction."""
    return _msg(IPCTNL_MSG_CT_NEW, _tuple(CTA_TUPLE_ORIG, proto, orig) + _attr(CTA_TIMEOUT, struct.pack("!I", timeout))
                + _attr(CTA_ZONE, struct.pack("!H", zone)), seq)


def get_msg(proto, tup, zone, seq, reply=False):
    """Look up the entry whose original (or, reply=True, reply) direction is tup."""
    kind = CTA_TUPLE_REPLY if reply else CTA_TUPLE_ORIG
    return _msg(IPCTNL_MSG_CT_GET, _tuple(kind, proto, tup) + _attr(CTA_ZONE, struct.pack("!H", zone)), seq)


def _parse_tuple(buf, span):
    a = _attrs(buf, span[0], span[1])
    ip = _attrs(buf, *a[CTA_TUPLE_IP]) if CTA_TUPLE_IP in a else {}
    l4 = _attrs(buf, *a[CTA_TUPLE_PROTO]) if CTA_TUPLE_PROTO in a else {}

    def addr(kind):
        s, e = ip.get(kind, (0, 0))
        return socket.inet_ntoa(bytes(buf[s:e])) if e - s == 4 else None

    def port(kind):
        s, e = l4.get(kind, (0, 0))
        return struct.unpack_from("!H", buf, s)[0] if e - s == 2 else 0

    return (addr(CTA_IP_V4_SRC), addr(CTA_IP_V4_DST), port(CTA_PROTO_SRC_PORT), port(CTA_PROTO_DST_PORT))


def parse_entry(buf, off, end, zone=None):
    """An IPCTNL_MSG_CT_NEW message body (after nlmsghdr) -> the dict nat.offload's
    parse_conntrack makes of a `conntrack -L` line (timeout, flags and line left out).
    zone None: the entry's own CTA_ZONE (absent: 0)."""
    a = _attrs(buf, off + 4, end)  # after nfgenmsg
    if zone is None:
        zone = struct.unpack_from("!H", buf, a[CTA_ZONE][0])[0] if CTA_ZONE in a else 0
    if CTA_TUPLE_ORIG not in a or CTA_TUPLE_REPLY not in a:
        return None
    l4 = _attrs(buf, *_attrs(buf, *a[CTA_TUPLE_ORIG]).get(CTA_TUPLE_PROTO, (0, 0)))
    s, e = l4.get(CTA_PROTO_NUM, (0, 0))
    status = struct.unpack_from("!I", buf, a[CTA_STATUS][0])[0] if CTA_STATUS in a else 0
    return {"zone": zone, "proto": buf[s] if e > s else 0, "orig": _parse_tuple(buf, a[CTA_TUPLE_ORIG]),
            "reply": _parse_tuple(buf, a[CTA_TUPLE_REPLY]), "replied": bool(status & IPS_SEEN_REPLY)}


class Conntrack:
    """One ctnetlink socket for the offload's lookups and refreshes."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.settimeout(1.0)
        self.seq = 0

    def _ask(self, make):
        """Send make(seq); return (entry messages' (data, start, end), error) at our ack."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.sock.send(make(self.seq))
        got = []
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                mlen, mtype, _, mseq, _ = struct.unpack_from("=IHHII", data, off)
                if mseq == self.seq:
                    if mtype == NLMSG_ERROR:
                        return got, -struct.unpack_from("=i", data, off + 16)[0]
                    if mtype == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW:
                        got.append((data, off + 16, off + mlen))
                off += max(16, (mlen + 3) & ~3)

    def set_timeout(self, proto, orig, zone, timeout):
        """True if the entry was there and got the timeout; False if it is gone (ENOENT)."""
        _, err = self._ask(lambda seq: set_timeout_msg(proto, orig, zone, timeout, seq))
        if err == 0:
            return True
        if err == errno.ENOENT:
            return False
        raise OSError(err, "ctnetlink: %s" % os.strerror(err))

    def get(self, proto, tup, zone, reply=False):
        """The entry (parse_entry's dict) whose original (reply=True: reply) direction is tup in
        zone, or None."""
        got, err = self._ask(lambda seq: get_msg(proto, tup, zone, seq, reply))
        if err == errno.ENOENT:
            return None
        if err:
            raise OSError(err, "ctnetlink: %s" % os.strerror(err))
        for data, start, end in got:
            e = parse_entry(data, start, end, zone)
            if e is not None:
                return e
        return None

    def dump(self, keep=lambda e: True):
        """[(entry dict, its CTA_TUPLE_ORIG attribute bytes)] of the IPv4 table's entries for
        which keep(entry) is true (only those are kept: a router's table can hold 10^4-10^5). A
        dump the kernel marks interrupted (NLM_F_DUMP_INTR: the table changed under it) is retried."""
        def kept(data, start, end):
            e = parse_entry(data, start, end)
            if e is not None and keep(e):
                s, stop = _attrs(data, start + 4, end)[CTA_TUPLE_ORIG]
                yield e, bytes(data[s - 4:stop])

        out, err, self.seq = nfnetlink.dump(self.sock, dump_msg, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW,
                                            kept, self.seq, bufsize=1 << 20)
        if err:
            raise OSError(err, "ctnetlink dump: %s" % os.strerror(err))
        return out

    def delete_matching(self, match):
        """Delete every entry for which match(entry dict) is true; the number deleted (an entry
        that went away meanwhile is not counted)."""
        deleted = 0
        for e, orig in self.dump(match):
            _, err = self._ask(lambda seq: delete_msg(orig, e["zone"], seq))
            if err == 0:
                deleted += 1
            elif err != errno.ENOENT:
                raise OSError(err, "ctnetlink delete: %s" % os.strerror(err))
        return deleted

    def close(self):
        self.sock.close()
