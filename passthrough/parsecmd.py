"""`passthrough parse --pcap FILE [--json]`: decode a capture with the daemon's own parsers.

One line per frame: a JSON object (sort_keys, every decode_ip() key plus frame and time), or a
compact human table. Useful to check what the router will see before trusting it with traffic,
and as the thing the tshark oracle test compares against.
"""
import argparse
import json
import sys

from passthrough.pcap import open_pcap
from passthrough.proto.decode import decode_ip


def add_arguments(parser):
    parser.add_argument("--pcap", required=True, metavar="FILE",
                        help="capture to decode (pcap or pcapng)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per packet per line")


def records(reader):
    """(record dict) per frame; non-IP frames keep every decode key, set to None."""
    for ts, ip, err in reader:
        if ip is None:
            d = decode_ip(b"")
            d["error"] = err
        else:
            d = decode_ip(ip)
        d["frame"] = reader.count
        d["time"] = ts
        yield d


def _endpoint(addr, port):
    if addr is None:
        return "-"
    if port is None:
        return addr
    if ":" in addr:
        return "[%s]:%d" % (addr, port)
    return "%s:%d" % (addr, port)


def summary(d):
    """Short human description of a decoded packet."""
    proto = d["proto"]
    parts = []
    if proto == "ike" and d["ike_version"] is None:
        parts.append("IKE")
    elif proto == "ike":
        parts.append("IKEv%s %s" % (d["ike_version"], d["ike_exchange"]))
        if d["ike_version"] == 2:
            parts.append("response" if d["ike_response"] else "request")
            if d["ike_initiator"]:
                parts.append("(I)")
        parts.append("spi_i=%s spi_r=%s msgid=%s" % (d["ike_spi_i"], d["ike_spi_r"], d["ike_msgid"]))
        if d["ike_payloads"]:
            parts.append("[" + " ".join(d["ike_payloads"]) + "]")
        if d["ike_natt"]:
            parts.append("natt")
    elif proto == "esp" and d["esp_spi"] is None:
        parts.append("ESP")
    elif proto == "esp":
        parts.append("ESP spi=%s seq=%s" % (d["esp_spi"], d["esp_seq"]))
        if d["esp_udp"]:
            parts.append("udp")
    elif proto == "natt-keepalive":
        parts.append("NAT-T keepalive")
    elif proto == "l2tp":
        parts.append("L2TPv%s %s" % (d["l2tp_version"] or "?", d["l2tp_type"] or "?"))
        if d["l2tp_tunnel"] is not None:
            parts.append("tunnel=%s" % d["l2tp_tunnel"])
        if d["l2tp_session"] is not None:
            parts.append("session=%s" % d["l2tp_session"])
        if d["l2tp_ns"] is not None:
            parts.append("ns=%s nr=%s" % (d["l2tp_ns"], d["l2tp_nr"]))
        if d["l2tp_assigned_tunnel"] is not None:
            parts.append("assigned_tunnel=%s" % d["l2tp_assigned_tunnel"])
        if d["l2tp_assigned_session"] is not None:
            parts.append("assigned_session=%s" % d["l2tp_assigned_session"])
        if d["l2tp_hidden"]:
            parts.append("hidden-avps")
    elif d["l4"] is not None:
        parts.append("ip proto %d" % d["l4"])
    if d["frag"]:
        parts.append("fragment@%d" % d["frag_offset"])
    if d["error"]:
        parts.append("ERROR: %s" % d["error"])
    return " ".join(parts)


def _human_line(d, t0):
    t = d["time"]
    when = "%.6f" % (t - t0) if t is not None and t0 is not None else "-"
    return "%5d %12s  %-45s %-14s %s" % (
        d["frame"], when,
        _endpoint(d["src"], d["sport"]) + " > " + _endpoint(d["dst"], d["dport"]),
        d["proto"], summary(d))


def run(args):
    reader, err = open_pcap(args.pcap)
    if err:
        sys.stderr.write("passthrough parse: %s\n" % err)
        return 2
    out = sys.stdout
    t0 = None
    try:
        try:
            for d in records(reader):
                if args.json:
                    out.write(json.dumps(d, sort_keys=True) + "\n")
                else:
                    if t0 is None:
                        t0 = d["time"]
                    out.write(_human_line(d, t0) + "\n")
            out.flush()
        except BrokenPipeError:
            # `parse ... | head`: the reader went away, which is not our failure
            try:
                sys.stdout = None
            except Exception:
                pass
            return 0
    finally:
        reader.f.close()
    if reader.error:
        where = "after frame %d" % reader.count if reader.count else "at start"
        sys.stderr.write("passthrough parse: %s: %s (%s)\n" % (args.pcap, reader.error, where))
        return 2
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="passthrough parse",
                                     description="Decode IKE/ESP/NAT-T/L2TP packets in a capture.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
