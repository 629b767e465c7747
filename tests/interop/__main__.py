"""Run the interop matrix in the QEMU router: `.venv/bin/python -m tests.interop --json OUT`.

Boots the test image (built first if needed), installs passthrough with opkg as a user would,
runs every cell (--cells full, the default: 2 server x 2 client implementations x 4 modes x 3
router modes = 48 cells, ~30 min under TCG here) or the default test command's handful
(--cells default), and writes one JSON row per cell to OUT (after each cell, so a partial run
keeps what it has). --markdown prints the README's table at the end.
"""
import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "qemu"))

import qemulab  # noqa: E402
from tests.interop import matrix  # noqa: E402

IMAGE = os.environ.get("PT_QEMU_IMAGE", "/var/cache/passthrough-qemu/image-test")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tests.interop", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="OUT", help="write the rows here (JSON list)")
    ap.add_argument("--cells", choices=("full", "default"), default="full")
    ap.add_argument("--server", choices=matrix.IMPLEMENTATIONS)
    ap.add_argument("--client", choices=matrix.IMPLEMENTATIONS)
    ap.add_argument("--router-mode", choices=matrix.ROUTER_MODES + ("auto",))
    ap.add_argument("--mode", choices=sorted({m for _, m in matrix.MODES}))
    ap.add_argument("--markdown", action="store_true", help="print the README table at the end")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (namespaces, taps, QEMU)")
    cells = matrix.full_cells() if a.cells == "full" else matrix.default_cells()
    for key, want in (("server", a.server), ("client", a.client), ("router_mode", a.router_mode), ("mode", a.mode)):
        if want:
            cells = [c for c in cells if c[key] == want]
    if not cells:
        ap.error("no cell matches")
    workdir = tempfile.mkdtemp(prefix="pt-interop-")
    t0 = time.time()
    router = qemulab.ptqemu.Router(IMAGE, workdir=workdir)
    rows = []
    try:
        router.up()
        print("interop: router booted in %.0f s (%s); %d cells" % (router.guest.boot_seconds, router.guest.accel,
                                                                   len(cells)), flush=True)
        lab = qemulab.QemuLab(router, workdir)
        lab.install("opkg")
        lab.wait_daemon()

        def progress(row):
            print("interop: %-10s %-10s v%d %-11s %-10s %s %5.1f s %s" % (
                row["server"], row["client"], row["ike"], row["mode"], row["router_mode"],
                "pass" if row["ok"] else "FAIL", row["seconds"], "" if row["ok"] else row["reason"][:160]), flush=True)
        rows = matrix.run(lab, cells, progress=progress, out_path=a.json)
    finally:
        router.down()
    passed = sum(r["ok"] for r in rows)
    print("interop: %d of %d cells passed in %.1f min (workdir %s)" % (passed, len(rows), (time.time() - t0) / 60,
                                                                       workdir))
    if a.markdown:
        print(matrix.markdown(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
