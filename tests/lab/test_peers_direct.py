"""Real peers, directly connected (no NAT): client 203.0.113.10 <-> server 203.0.113.2.

Needs root, strongSwan (charon, swanctl, kernel-libipsec plugin), xl2tpd, nft, ethtool.
Every namespace/daemon is torn down by fixture finalizers, also on failure.
"""
import os
import shutil
import time

import pytest

from passthrough.lab import peers as P

# every test here is `peers`; the quick ones are also `lab` (pytest -m lab); the HELLO test
# takes ~62 s and is `slow` only (pytest -m slow).
pytestmark = [pytest.mark.peers]
lab = pytest.mark.lab

SUBNET_ADDR = "192.168.77.1/24"   # the gateway's protected subnet (on lo in the server ns)
INSIDE = "192.168.77.1"


def _missing():
    if os.geteuid() != 0:
        return "needs root"
    for tool in (P.CHARON, "swanctl", "xl2tpd", "nft", "ethtool", "tcpdump"):
        if not (os.path.exists(tool) or shutil.which(tool)):
            return "missing " + tool
    return None


if _missing():
    pytestmark = [pytest.mark.peers, pytest.mark.skip(reason=_missing())]


@pytest.fixture
def pair(request):
    p = P._DirectPair("pt-pr-t%d" % os.getpid())
    request.addfinalizer(p.down)
    return p.up()


@pytest.fixture
def start(request, tmp_path):
    """start(peer) -> peer started, stopped by a finalizer (also when start() fails halfway)."""
    def _start(peer):
        request.addfinalizer(peer.stop)
        return peer.start()
    return _start


def _ipsec_up(pair, start, tmp_path, version):
    P.add_address(pair.server, SUBNET_ADDR)  # before charon: else a MOBIKE address update follows
    srv = start(P.Charon(pair.server, str(tmp_path / "server"), "server"))
    cli = start(P.Charon(pair.client, str(tmp_path / "client"), "client"))
    srv.load(P.gateway_conf(pair.SERVER_IP, version=version))
    cli.load(P.roadwarrior_conf(pair.CLIENT_IP, pair.SERVER_IP, version=version))
    t0 = time.monotonic()
    cli.initiate("net", "rw")
    child = cli.wait_child_up("net")
    print("IKEv%d CHILD_SA up in %.3f s" % (version, time.monotonic() - t0))
    return srv, cli, child


@lab
@pytest.mark.parametrize("version", [2, 1])
def test_ipsec_child_sa_and_traffic(pair, start, tmp_path, version):
    srv, cli, child = _ipsec_up(pair, start, tmp_path, version)

    ike = child["ike"]
    assert ike["version"] == str(version)
    assert ike["state"] == "ESTABLISHED"
    assert ike["local-host"] == pair.CLIENT_IP and ike["remote-host"] == pair.SERVER_IP
    # kernel-libipsec: fake NAT-D -> IKE floats to 4500, ESP is UDP-encapsulated
    assert ike["remote-port"] == "4500" and ike["local-port"] == "4500"
    assert ike.get("nat-remote") == "yes"
    assert not cli.nat_here()  # no real NAT: the client must not see itself behind NAT
    assert child["protocol"] == "ESP" and child["mode"] == "TUNNEL" and child["encap"] == "yes"
    assert child["remote-ts"] == ["192.168.77.0/24"]
    vip = ike["local-vips"][0]
    assert child["local-ts"] == [vip + "/32"]

    # the server sees the same SAs, SPIs mirrored
    srv_children = srv.children("net")
    assert len(srv_children) == 1
    s = srv_children[0]
    assert s["state"] == "INSTALLED"
    assert (s["spi-in"], s["spi-out"]) == (child["spi-out"], child["spi-in"])
    assert s["ike"]["remote-host"] == pair.CLIENT_IP

    # charon's private /run bind mount does not show in the host's mount table
    with open("/proc/self/mountinfo") as f:
        assert cli.run_dir not in f.read()

    replies, pin, pout = P.ping_through_tunnel(cli, INSIDE, count=3)
    assert replies == 3
    assert pin >= 3 and pout >= 3

    cli.terminate(ike="rw")
    srv.wait_no_sas()
    assert cli.list_sas() == []


@lab
def test_xl2tpd_control_tunnel(pair, start, tmp_path):
    lns = start(P.Xl2tpd(pair.server, str(tmp_path / "lns"), "lns", role="lns",
                         listen_addr=pair.SERVER_IP, pppd="real"))
    t0 = time.monotonic()
    # the LAC runs the silent pppd stub: with the real pppd on both sides both send CDN, the
    # CDNs cross and xl2tpd 1.3.18 then drops the LAC's next messages as out of order
    lac = start(P.Xl2tpd(pair.client, str(tmp_path / "lac"), "lac", role="lac",
                         lns_addr=pair.SERVER_IP, ppp_interval=None))
    t_lac = lac.tunnel_up()
    t_lns = lns.tunnel_up()
    print("xl2tpd tunnel up in %.3f s (from LAC start)" % (time.monotonic() - t0))
    assert t_lac["peer"] == pair.SERVER_IP and t_lac["port"] == 1701
    assert t_lns["peer"] == pair.CLIENT_IP and t_lns["port"] == 1701
    # tunnel ids are mirrored
    assert (t_lac["local"], t_lac["remote"]) == (t_lns["remote"], t_lns["local"])
    assert lac.tunnel_ids() == [(t_lac["local"], t_lac["remote"])]
    c_lac, c_lns = lac.call_up(), lns.call_up()
    assert (c_lac["local"], c_lac["remote"]) == (c_lns["remote"], c_lns["local"])
    # the LNS's real pppd fails without /dev/ppp; it closes the call (CDN), the tunnel stays
    lac.wait_log(r"Call-Disconnect-Notify")
    assert lac.running and lns.running
    mark = len(lns.log_text())
    lac.disconnect()
    lns.wait_log(r"Stop-Control-Connection-Notification", start=mark)


@lab
def test_xl2tpd_call_with_pppd_stub(pair, start, tmp_path):
    """With the pppd stand-in the call stays up and PPP frames cross as L2TP data."""
    lns = start(P.Xl2tpd(pair.server, str(tmp_path / "lns"), "lns", role="lns",
                         listen_addr=pair.SERVER_IP, ppp_interval=0.2))
    lac = start(P.Xl2tpd(pair.client, str(tmp_path / "lac"), "lac", role="lac",
                         lns_addr=pair.SERVER_IP, ppp_interval=0.2))
    lac.tunnel_up()
    lac.call_up()
    lns.call_up()
    lac.wait_ppp_rx(3)
    lns.wait_ppp_rx(3)
    assert not lac.log_has(r"Call-Disconnect-Notify")
    # the stub bind mount is private to xl2tpd's mount namespace
    with open("/proc/self/mountinfo") as f:
        assert "/usr/sbin/pppd" not in f.read()


@lab
def test_lns_answers_from_other_port(pair, start, tmp_path):
    """RFC 2661 8.1: the LAC sends to 1701, the LNS answers from 1702; xl2tpd's LAC accepts it."""
    P.lns_port_rewrite(pair.server, 1702)
    cap = P.Capture(pair.server, pair.IFACE, str(tmp_path / "l2tp.pcap"), "udp").start()
    try:
        lns = start(P.Xl2tpd(pair.server, str(tmp_path / "lns"), "lns", role="lns",
                             listen_addr=pair.SERVER_IP, port=1702))
        lns.wait_log(r"Listening on IP address 203\.0\.113\.2, port 1702")
        lac = start(P.Xl2tpd(pair.client, str(tmp_path / "lac"), "lac", role="lac",
                             lns_addr=pair.SERVER_IP))
        assert lac.tunnel_up()["port"] == 1701
        lac.call_up()
        lac.wait_ppp_rx(1)
    finally:
        cap.stop()
    ports = set()
    for sport, dport in _udp_ports(cap.path):
        ports.add((sport, dport))
    assert (1701, 1701) in ports      # LAC -> LNS as sent on the wire
    assert (1702, 1701) in ports      # LNS -> LAC from the other port
    assert (1701, 1702) not in ports  # the LAC does not switch to the new port


@pytest.mark.slow
def test_xl2tpd_hello_every_60s(pair, start, tmp_path):
    """xl2tpd sends HELLO after 60 s without control traffic; the peer acks it with a ZLB."""
    lns = start(P.Xl2tpd(pair.server, str(tmp_path / "lns"), "lns", role="lns",
                         listen_addr=pair.SERVER_IP, ppp_interval=None))
    lac = start(P.Xl2tpd(pair.client, str(tmp_path / "lac"), "lac", role="lac",
                         lns_addr=pair.SERVER_IP, ppp_interval=None))
    lac.call_up()
    t0 = time.monotonic()
    mark = len(lac.log_text())
    lac.wait_log(P.L2TP_HELLO_RE, 75, start=mark)   # HELLO from the LNS
    lns.wait_log(P.L2TP_HELLO_RE, 75)               # and from the LAC
    waited = time.monotonic() - t0
    print("HELLO after %.1f s" % waited)
    assert 55 < waited < 70
    assert lac.running and lns.running


def _udp_ports(path):
    import struct
    with open(path, "rb") as f:
        data = f.read()
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack("<I", data[off + 8:off + 12])[0]
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if pkt[12:14] == b"\x08\x00" and pkt[23] == 17:
            ihl = (pkt[14] & 15) * 4
            yield struct.unpack("!HH", pkt[14 + ihl:14 + ihl + 4])


@lab
def test_swanctl_pretty_parser():
    text = """list-sa event {
  rw {
    uniqueid = 1
    state = ESTABLISHED
    local-id = C=CH, O=strongSwan, CN=moon
    local-vips = [
      192.168.78.1
    ]
    child-sas {
      net-1 {
        name = net
        local-ts = [
          192.168.78.1/32
        ]
      }
    }
  }
}
list-sas reply {
}
"""
    msgs = P.parse_swanctl_pretty(text)
    assert [m for m, _ in msgs] == ["list-sa event", "list-sas reply"]
    sa = msgs[0][1]["rw"]
    assert sa["local-id"] == "C=CH, O=strongSwan, CN=moon"
    assert sa["local-vips"] == ["192.168.78.1"]
    assert sa["child-sas"]["net-1"]["local-ts"] == ["192.168.78.1/32"]
