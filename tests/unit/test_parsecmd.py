"""`passthrough parse` (passthrough.parsecmd): JSON lines, human table, exit codes."""
import argparse
import json
import os
import subprocess
import sys

import pytest

scapy_all = pytest.importorskip("scapy.all")
from scapy.all import IP, UDP, Ether, Raw, wrpcap  # noqa: E402
from scapy.layers.ipsec import ESP  # noqa: E402

from passthrough import parsecmd  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIRED = ["frame", "time", "proto", "ike_version", "ike_exchange", "ike_spi_i", "ike_spi_r",
            "ike_msgid", "esp_spi", "l2tp_type", "l2tp_tunnel", "l2tp_session", "src", "dst",
            "sport", "dport", "error"]


def ikev2_sa_init():
    return (b"\x01\x02\x03\x04\x05\x06\x07\x08" + b"\x00" * 8 +
            bytes([0, 0x20, 34, 0x08]) + (0).to_bytes(4, "big") + (28).to_bytes(4, "big"))


@pytest.fixture
def capture(tmp_path):
    pkts = [
        Ether() / IP(src="192.0.2.1", dst="198.51.100.2") / UDP(sport=500, dport=500) / Raw(ikev2_sa_init()),
        Ether() / IP(src="192.0.2.1", dst="198.51.100.2") / ESP(spi=0xABCDEF01, seq=2, data=b"x" * 16),
        Ether() / IP(src="192.0.2.1", dst="198.51.100.2") / UDP(sport=4500, dport=4500) / Raw(b"\xff"),
        Ether() / IP(src="192.0.2.1", dst="198.51.100.2") / UDP(sport=1701, dport=1701) /
        Raw(bytes.fromhex("c802000c00050000" "00010002")),
        Ether(type=0x0806) / Raw(b"\x00" * 28),
    ]
    for i, p in enumerate(pkts):
        p.time = 1700000000 + i * 0.25
    path = tmp_path / "c.pcap"
    wrpcap(str(path), pkts)
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "passthrough.parsecmd"] + list(args), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_json_lines(capture):
    r = run_cli("--pcap", str(capture), "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5
    recs = [json.loads(line) for line in lines]
    for i, (line, rec) in enumerate(zip(lines, recs)):
        assert line == json.dumps(rec, sort_keys=True)
        for k in REQUIRED:
            assert k in rec
        assert rec["frame"] == i + 1
        assert rec["time"] == pytest.approx(1700000000 + i * 0.25)
    assert recs[0]["proto"] == "ike" and recs[0]["ike_exchange"] == "IKE_SA_INIT"
    assert recs[0]["ike_spi_i"] == "0102030405060708" and recs[0]["ike_msgid"] == 0
    assert recs[1]["proto"] == "esp" and recs[1]["esp_spi"] == "abcdef01"
    assert recs[2]["proto"] == "natt-keepalive"
    assert recs[3]["l2tp_type"] == "ZLB" and recs[3]["l2tp_tunnel"] == 5
    assert recs[4]["proto"] == "other" and recs[4]["error"] == "not an IP packet (ethertype 0x0806)"
    assert recs[4]["src"] is None and recs[4]["ike_spi_i"] is None


def test_human_table(capture):
    r = run_cli("--pcap", str(capture))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5
    assert "192.0.2.1:500 > 198.51.100.2:500" in lines[0] and "IKEv2 IKE_SA_INIT request" in lines[0]
    assert "ESP spi=abcdef01 seq=2" in lines[1]
    assert "NAT-T keepalive" in lines[2]
    assert "L2TPv2 ZLB tunnel=5 session=0" in lines[3]
    assert "0.250000" in lines[1]


@pytest.mark.parametrize("content,msg", [
    (None, "cannot open"),
    (b"", "empty or truncated file"),
    (b"this is not a capture at all\n", "not a pcap or pcapng file"),
])
def test_bad_files_exit_2_without_traceback(tmp_path, content, msg):
    path = tmp_path / "bad.pcap"
    if content is not None:
        path.write_bytes(content)
    r = run_cli("--pcap", str(path), "--json")
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_truncated_capture_keeps_output_and_exits_2(capture, tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(capture.read_bytes()[:-10])
    r = run_cli("--pcap", str(cut), "--json")
    assert r.returncode == 2 and "truncated pcap record" in r.stderr and "after frame 4" in r.stderr
    assert len(r.stdout.splitlines()) == 4


def test_directory_is_a_clean_error(tmp_path):
    r = run_cli("--pcap", str(tmp_path))
    assert r.returncode == 2 and "cannot open" in r.stderr and "Traceback" not in r.stderr


def test_missing_pcap_argument_is_usage_error():
    r = run_cli()
    assert r.returncode == 2 and "--pcap" in r.stderr


def test_subparser_wiring(capture, capsys):
    """How the CLI wires it: add_arguments() on a subparser, run(args) -> exit code."""
    parser = argparse.ArgumentParser(prog="passthrough")
    sub = parser.add_subparsers(dest="cmd")
    parsecmd.add_arguments(sub.add_parser("parse"))
    args = parser.parse_args(["parse", "--pcap", str(capture), "--json"])
    assert parsecmd.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[1])["esp_spi"] == "abcdef01"


def test_broken_pipe_is_quiet(capture):
    cmd = "%s -m passthrough.parsecmd --pcap %s --json | head -c 10 >/dev/null" % (sys.executable, capture)
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, capture_output=True, text=True)
    assert "Traceback" not in r.stderr
