"""Command line: `passthrough run|reload|status|parse|flush|lab`."""
import argparse
import json
import os
import signal
import socket
import sys

DEFAULT_CONFIG = "/etc/config/passthrough"


def control_path(args):
    if getattr(args, "socket", None):
        return args.socket
    from passthrough import config as configmod

    try:
        return configmod.load(args.config).control_socket
    except configmod.ConfigError:
        return configmod.DEFAULTS["control_socket"]


def ask(path, command, timeout=5.0):
    """Send one command to a running daemon's control socket; return its JSON reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    return json.loads(data.decode())


def cmd_run(args):
    from passthrough import daemon

    return daemon.main(args)


def cmd_reload(args):
    path = control_path(args)
    try:
        reply = ask(path, "reload")
    except (OSError, ValueError) as e:
        if args.pidfile and os.path.exists(args.pidfile):
            with open(args.pidfile) as f:
                os.kill(int(f.read().strip()), signal.SIGHUP)
            print("sent SIGHUP (control socket %s: %s)" % (path, e))
            return 0
        print("passthrough: no daemon answers on %s: %s" % (path, e), file=sys.stderr)
        return 1
    if reply.get("ok"):
        off = reply.get("switched_off") or []
        print("reloaded in %s ms%s" % (reply.get("ms"), (" (switched off: %s)" % ", ".join(off)) if off else ""))
        return 0
    print("passthrough: reload refused, last good config kept: %s" % reply.get("error"), file=sys.stderr)
    return 1


STATUS_COLUMNS = ("kind", "lan_ip", "lan_port", "wan_port", "remote_ip", "remote_port", "key", "state", "age", "packets")


def cmd_status(args):
    path = control_path(args)
    try:
        reply = ask(path, "status")
    except (OSError, ValueError) as e:
        print("passthrough: no daemon answers on %s: %s" % (path, e), file=sys.stderr)
        return 1
    flows = reply.get("flows", [])
    if args.json:
        for f in flows:
            print(json.dumps(f, sort_keys=True))
        return 0
    s = reply.get("summary", {})
    print("passthrough: backend %s, %d flows, %d pending, hosts %s" % (
        s.get("backend"), s.get("flows", 0), s.get("pending", 0),
        ", ".join("%s=zone %s" % (h, z) for h, z in sorted(s.get("hosts", {}).items())) or "none"))
    print("  l2tp %s, ipsec %s, pptp %s" % tuple("on" if s.get(k) else "off" for k in (
        "l2tp_passthrough", "ipsec_passthrough", "pptp_passthrough")))
    natt = s.get("natt_ports") or {}
    if natt:
        print("  NAT-T ports: %s (option natt_ports '%s'), %d distinct port(s) in use of %s" % (
            natt.get("effective"), natt.get("configured"), natt.get("distinct_in_use", 0), natt.get("range")))
    off = s.get("offload") or {}
    if off.get("active"):
        prog = off.get("program", {})
        print("  BPF offload on: %d flow pairs, %d packets carried, %d to the stack (no route/neighbour %d, policy %d)" % (
            off.get("pairs", 0), prog.get("carried", 0), prog.get("miss", 0) + prog.get("fib", 0) + prog.get("policy", 0)
            + prog.get("other_port", 0), prog.get("fib", 0), prog.get("policy", 0)))
    elif off:
        print("  BPF offload %s" % off.get("note"))
    if s.get("flowtables"):
        from nat.nftables import flowtable_warning
        print("  warning: " + flowtable_warning(s["flowtables"]))
    rows = [[str(f.get(c) if f.get(c) is not None else "-") for c in STATUS_COLUMNS] for f in flows]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(STATUS_COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(STATUS_COLUMNS, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    return 0


def cmd_parse(args):
    from passthrough import parsecmd

    return parsecmd.run(args)


def cmd_flush(args):
    """Remove every rule and table passthrough installs (policy included)."""
    from passthrough import config as configmod
    from nat.kernel import Kernel

    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError:
        cfg = configmod.Config()
    Kernel(cfg).remove(keep_policy=False)
    for dev in (cfg.lan_device, cfg.wan_device):
        try:
            from nat import bpf
            bpf.detach(socket.if_nametoindex(dev))
        except Exception:  # noqa: BLE001 - no libbpf or no such device: nothing of ours is attached there
            pass  # (per device: a missing LAN device must not keep the WAN's program)
    print("passthrough rules removed")
    return 0


def cmd_render(args):
    """Print the nft text passthrough would install (for fw4 includes and review)."""
    from passthrough import config as configmod
    from nat import nftables as nftx

    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        print("passthrough: %s" % e, file=sys.stderr)
        return 2
    if args.what == "policy":
        sys.stdout.write(nftx.render_policy(cfg))
    else:
        sys.stdout.write(nftx.render_fastpath(cfg, args.backend))
    return 0


def cmd_lab(args):
    from passthrough.lab import demo

    return demo.main(args)


def build_parser():
    ap = argparse.ArgumentParser(prog="passthrough", description="VPN passthrough / NAT-T for routers")
    sub = ap.add_subparsers(dest="command")
    sub.required = True

    def with_config(p):
        p.add_argument("--config", default=DEFAULT_CONFIG, help="UCI file or .yaml (default %(default)s)")
        p.add_argument("--socket", help="control socket (default: the config's control_socket)")

    p = sub.add_parser("run", help="run the daemon in the foreground")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--control", help="control socket path (overrides the config)")
    p.add_argument("--pidfile")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-syslog", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("reload", help="re-read the config in the running daemon")
    with_config(p)
    p.add_argument("--pidfile", help="fall back to SIGHUP to this pid")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("status", help="show tracked flows")
    with_config(p)
    p.add_argument("--json", action="store_true", help="one JSON object per flow per line")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("parse", help="decode IKE/ESP/NAT-T/L2TP packets of a pcap")
    try:
        from passthrough import parsecmd

        parsecmd.add_arguments(p)
    except ImportError:
        p.add_argument("--pcap", required=True)
        p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_parse)

    p = sub.add_parser("flush", help="remove all passthrough rules (policy included)")
    with_config(p)
    p.set_defaults(func=cmd_flush)

    p = sub.add_parser("render", help="print the nft ruleset (policy table or fast path) for a config")
    with_config(p)
    p.add_argument("what", choices=["policy", "fastpath"])
    p.add_argument("--backend", choices=["nft", "xt"], default="nft")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("lab", help="namespace lab: up | down | demo")
    p.add_argument("action", choices=["up", "down", "demo", "status"])
    p.add_argument("--prefix", default="pt-", help="namespace name prefix (default %(default)s)")
    p.add_argument("--keep", action="store_true", help="demo: leave the lab up afterwards")
    p.set_defaults(func=cmd_lab)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
