"""`passthrough lab up|down|status|demo`: the namespace lab in one command."""
import os
import sys
import time

from passthrough.lab.harness import LabRun


def say(text):
    sys.stdout.write("\n== %s\n" % text)
    sys.stdout.flush()


def show(label, summaries):
    for i, s in enumerate(summaries):
        ok = "OK " if s.get("replies") else "-- "
        print("   %s lan%d %-9s sent %3s  replies %3s%s" % (ok, i + 1, label, s.get("sent"), s.get("replies"),
              ("  (" + s["error"] + ")") if s.get("error") else ""))


def print_status(run):
    from passthrough.cli import main as cli

    cli(["status", "--socket", run.control])


def traffic(run, tag):
    """The same scenario each time: both LAN hosts, same server, same ports."""
    srv, srv_alt = run.lab.server_ip(0), run.lab.server_ip(1)
    esp = run.clients("esp", [["--server", srv, "--spi", "0x%x" % (0x1000 + h + tag * 16), "--count", 20,
                               "--interval", 0.01, "--wait", 0.5] for h in range(2)])
    ike = run.clients("ike", [["--server", srv, "--spi", "0x%x" % (0xA000 + h + tag * 16), "--count", 3,
                               "--wait", 0.5] for h in range(2)])
    l2tp = run.clients("l2tp", [["--server", srv_alt, "--tid", 100 + h + tag * 16, "--count", 5, "--wait", 0.5,
                                 "--setup-timeout", 2] for h in range(2)])
    show("raw ESP", esp)
    show("IKE 500", ike)
    show("L2TP", l2tp)
    return esp, ike, l2tp


def demo(run):
    say("lab up: lan1 %s, lan2 %s -> router (%s / %s) -> server %s, %s" % (
        run.lab.lan_ip(0), run.lab.lan_ip(1), run.lab.lan_device, run.lab.wan_device, run.lab.server_ip(0),
        run.lab.server_ip(1)))
    say("baseline: plain kernel masquerade, no passthrough (raw ESP from both hosts to one server)")
    base = run.clients("esp", [["--server", run.lab.server_ip(0), "--spi", "0x%x" % (0x900 + h), "--count", 20,
                                "--interval", 0.01, "--wait", 0.5] for h in range(2)])
    show("raw ESP", base)
    run.start_daemon()
    say("passthrough running (config %s): both hosts, ESP + IKE on 500 + L2TP (LNS answers from 1702)" % run.config_path)
    traffic(run, 1)
    offload = run.status()["summary"]["offload"]
    if offload.get("active"):
        say("BPF offload: once conntrack accepted them, the learned flows' data skips netfilter")
        time.sleep(1.5)  # the daemon offloads once a second
        c0 = run.status()["summary"]["offload"]["program"]["carried"]
        esp = run.clients("esp", [["--server", run.lab.server_ip(0), "--spi", "0x%x" % (0x1000 + h + 16), "--count",
                                   50, "--interval", 0.01, "--wait", 0.5] for h in range(2)])
        show("raw ESP", esp)
        offload = run.status()["summary"]["offload"]
        print("   the tc program carried %d of these packets; %d map entries" % (
            offload["program"]["carried"] - c0, offload["entries"]))
    else:
        say("BPF offload not active: %s" % offload.get("note"))
    say("passthrough status")
    print_status(run)
    say("conntrack on the router: one zone per LAN host, ports 500/1701 preserved")
    for line in run.conntrack().splitlines():
        if "zone=" in line:
            print("   " + " ".join(w for w in line.split() if not w.startswith(("mark=", "use="))))
    say("uci set passthrough.global.l2tp_passthrough=0; passthrough reload")
    print("   reload:", run.set_options(l2tp_passthrough="0"))
    traffic(run, 2)
    say("l2tp_passthrough=1 again")
    print("   reload:", run.set_options(l2tp_passthrough="1"))
    traffic(run, 3)
    say("kill -9 the daemon: established flows keep going in the kernel (fail-open)")
    run.kill_daemon()
    esp = run.clients("esp", [["--server", run.lab.server_ip(0), "--spi", "0x%x" % (0x1000 + h + 3 * 16), "--count", 20,
                               "--interval", 0.01, "--wait", 0.5] for h in range(2)])
    show("raw ESP", esp)
    say("restart: the daemon re-adopts what the kernel kept")
    run.start_daemon()
    print_status(run)
    return 0


def main(args):
    run = LabRun(prefix=args.prefix)
    if args.action == "down":
        run.down()
        print("lab %s removed" % args.prefix)
        return 0
    if args.action == "status":
        print_status(run)
        return 0
    if os.geteuid() != 0:
        print("passthrough lab needs root (network namespaces)", file=sys.stderr)
        return 1
    if args.action == "up":
        run.up()
        print("lab up: namespaces %s; daemon log %s; control socket %s" % (
            ", ".join(run.lab.namespaces), run.daemon_log, run.control))
        print("try: passthrough status --socket %s" % run.control)
        run.daemon = None  # keep running after we exit; `lab down` ends it by its pidfile
        run.responders = []
        return 0
    t0 = time.time()
    try:
        run.up(start_daemon=False)
        rc = demo(run)
        say("demo finished in %.1f s" % (time.time() - t0))
        return rc
    finally:
        if args.keep:
            run.daemon = None
            run.responders = []
            print("lab kept; remove with: passthrough lab down --prefix %s" % args.prefix)
        else:
            run.down()
