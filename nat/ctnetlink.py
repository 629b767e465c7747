"""Conntrack timeout refresh over ctnetlink, for flows the BPF offload carries past conntrack.

The conntrack tool cannot do it: `conntrack -U` refuses --zone (conntrack-tools 1.4.7) and
without it finds only zone 0 entries. An IPCTNL_MSG_CT_NEW without NLM_F_CREATE for an existing
tuple changes that entry (here: its timeout) and fails with ENOENT when there is none.
"""
import errno
import os
import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
# enum ctattr_type / ctattr_tuple / ctattr_ip / ctattr_l4proto (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_TIMEOUT, CTA_ZONE = 1, 7, 18
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
IPPROTO_UDP = 17


def _attr(kind, payload, nested=False):
    """One netlink attribute, padded to 4 bytes."""
    head = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0))
    pad = (-len(payload)) % 4
    return head + payload + b"\0" * pad


def set_timeout_msg(proto, orig, zone, timeout, seq):
    """The request: orig = (src, dst, sport, dport) of the entry's original direction."""
    ip = _attr(CTA_IP_V4_SRC, socket.inet_aton(orig[0])) + _attr(CTA_IP_V4_DST, socket.inet_aton(orig[1]))
    l4 = _attr(CTA_PROTO_NUM, struct.pack("B", proto))
    if proto == IPPROTO_UDP:
        l4 += _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", orig[2])) + _attr(CTA_PROTO_DST_PORT, struct.pack("!H", orig[3]))
    body = struct.pack("!BBH", socket.AF_INET, 0, 0)  # nfgenmsg
    body += _attr(CTA_TUPLE_ORIG, _attr(CTA_TUPLE_IP, ip, True) + _attr(CTA_TUPLE_PROTO, l4, True), True)
    body += _attr(CTA_TIMEOUT, struct.pack("!I", timeout))
    body += _attr(CTA_ZONE, struct.pack("!H", zone))
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW,
                       NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


class Conntrack:
    """One ctnetlink socket for the daemon's refreshes."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.settimeout(1.0)
        self.seq = 0

    def set_timeout(self, proto, orig, zone, timeout):
        """True if the entry was there and got the timeout; False if it is gone (ENOENT)."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.sock.send(set_timeout_msg(proto, orig, zone, timeout, self.seq))
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                mlen, mtype, _, mseq, _ = struct.unpack_from("=IHHII", data, off)
                if mtype == NLMSG_ERROR and mseq == self.seq:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if err == 0:
                        return True
                    if err == errno.ENOENT:
                        return False
                    raise OSError(err, "ctnetlink: %s" % os.strerror(err))
                off += max(16, (mlen + 3) & ~3)

    def close(self):
        self.sock.close()
