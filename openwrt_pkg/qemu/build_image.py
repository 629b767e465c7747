#!/usr/bin/env python3
"""Build the QEMU x86-64 router image: OpenWrt's own userspace on Debian's kernel and C library.

    build_image.py OUTDIR [--cache DIR] [--force]

Output (OUTDIR): vmlinux (uncompressed, PVH entry: boots fast under TCG), initrd.cpio
(uncompressed newc initramfs), manifest.json (inputs hash, sizes, build time, and every component
of the image with its origin: OpenWrt's upstream commit or the Debian package version, and its
binary paths in the image).

Three layers, each from where it really comes from:
1. OpenWrt (openwrt_layout.py): procd (PID 1), ubusd, logd, uci, ucode, rpcd, uhttpd, netifd,
   firewall4, jsonfilter, opkg, apk, base-files (/etc/preinit, /etc/init.d/boot, rc.common,
   functions.sh, config_generate, ...) and LuCI (luci_layout.py), built by userspace.py from the
   pinned upstream commits (OPENWRT_SRC mirror or git) and installed at the paths of their package
   Makefiles. The boot is OpenWrt's: /init -> /sbin/init (procd's) -> /etc/preinit -> procd ->
   /etc/inittab -> rcS -> /etc/rc.d/S* (boot, log, network, firewall, rpcd, uhttpd, ...).
2. Debian bookworm packages (`apt-get download`, cached under --cache, default
   /var/cache/passthrough-qemu; once cached no network is needed): the kernel (linux-image-amd64
   6.1 with nft_queue, esp4, l2tp_ppp, ppp_generic as modules; installed flat in
   /lib/modules/<ver>/ and loaded by ubox's kmodloader from /etc/modules.d as on OpenWrt), glibc
   and the C libraries OpenWrt's code links against (json-c, libnl-3, openssl, zlib, libbsd),
   busybox (/bin/sh is busybox ash, as on OpenWrt; the dynamic Debian build, whose ash runs
   /sbin/ip rather than its own applet), python3.11, nftables, iproute2, conntrack,
   libnetfilter-queue, libbpf, and the VPN peers the tests run inside the guest (strongSwan,
   xl2tpd, pppd). What OpenWrt would build itself from its feeds comes from Debian here; the
   image's opkg status and apk database declare those as the OpenWrt packages they stand for
   (pkgdb.py), so passthrough's packages install with their dependencies resolved.
3. The test harness (guest/, not shipped to any router): the virtio-serial agent as a procd
   service, pt-vpnlab (real L2TP/IPsec peers in guest namespaces), a uci-defaults script that
   sets the lab's addresses (static WAN 203.0.113.1/24 on a bridge, so pt-vpnlab can put a server
   on the WAN segment), and passthrough's packages (.ipk and .apk, built by build_ipk.py) under
   /root/packages for the tests to install with the real opkg or apk.
"""
import argparse
import glob
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GUEST = os.path.join(HERE, "guest")
DEFAULT_CACHE = os.environ.get("PT_QEMU_CACHE", "/var/cache/passthrough-qemu")
FORMAT = 4  # bump when the image layout changes in a way the inputs hash cannot see
sys.path.insert(0, HERE)
import openwrt_layout  # noqa: E402
import sources  # noqa: E402
import userspace  # noqa: E402

KERNEL_META = "linux-image-amd64"
PACKAGES = [
    "busybox", "python3.11-minimal", "libpython3.11-stdlib", "nftables", "libnftables1",
    "iproute2", "conntrack", "libnetfilter-queue1", "libnfnetlink0", "libmnl0", "netbase", "libc6",
    # what OpenWrt's userspace links against (OpenWrt builds these itself: libjson-c, libnl-tiny,
    # libopenssl, zlib; libbsd only for glibc's missing strlcpy)
    "libjson-c5", "libnl-3-200", "libnl-route-3-200", "libnl-genl-3-200", "libssl3", "zlib1g", "libbsd0",
    "libcrypt1", "python3-yaml",
    # the BPF offload (nat/bpf.py loads /usr/lib/passthrough/offload.o with libbpf; OpenWrt: libbpf)
    "libbpf1",
    # real L2TP/IPsec peers inside the guest (kernel IPsec, pppd with /dev/ppp): tests/qemu
    "strongswan-charon", "strongswan-swanctl", "libstrongswan", "strongswan-libcharon", "xl2tpd", "ppp",
    # the interop matrix's other IPsec implementation (pluto, certutil for its NSS database) and
    # PPTP's client and server (tests/interop)
    "libreswan", "libnss3-tools", "pptpd", "pptp-linux",
    # the ISP side of a PPPoE WAN (rp-pppoe's pppoe-server; the router's side is pppd's pppoe.so)
    "pppoe",
]
# Pulled in by apt's closure but useless in a RAM-disk router (maintainer scripts, docs, perl), or
# replaced by OpenWrt's own tools (kmod: ubox's kmodloader; dash: busybox ash).
DENY = {
    "debconf", "cdebconf", "dpkg", "install-info", "tar", "perl", "perl-base", "perl-modules-5.36",
    "libperl5.36", "mailcap", "mime-support", "media-types", "libdebian-installer4", "libnewt0.52",
    "libslang2", "libtextwrap1", "libgdbm6", "libgdbm-compat4", "libdb5.3", "readline-common",
    "debianutils", "libcap2-bin", "adduser", "passwd", "usrmerge", "usr-is-merged",
    "sysvinit-utils", "init-system-helpers", "lsb-base", "libsemanage2", "libsemanage-common",
    "libfile-find-rule-perl", "libnumber-compare-perl", "libtext-glob-perl", "libpam-modules",
    "libpam-modules-bin", "libpam-runtime", "procps", "libproc2-0", "libelogind0", "kmod", "dash",
    "strongswan-starter", "systemd", "systemd-sysv", "libsystemd-shared", "udev", "base-files",
    "base-passwd", "login", "util-linux", "mount", "bsdutils", "sensible-utils", "coreutils",
    # libreswan's ipsec script wants a `host` command (DNS names in ipsec.conf); the lab uses addresses
    "bind9-host", "bind9-libs", "dns-root-data",
}
# Single files taken from otherwise unwanted packages (no dependency closure): OpenWrt's busybox
# has a flock applet (procd.sh locks each init script with it), Debian's busybox does not.
PARTIAL = {"util-linux": ["usr/bin/flock"]}
# Kernel module directories (under kernel/) copied into the image, plus the depends= closure.
MODULE_DIRS = [
    "net/netfilter", "net/ipv4", "net/ipv6", "net/bridge", "net/l2tp", "net/xfrm", "net/key", "net/802",
    "net/llc", "net/core", "drivers/net/ppp", "drivers/virtio", "crypto",
]
MODULE_SKIP = ("/ipvs/", "/netfilter/ipset/", "pktgen", "/crypto/async_tx/")
MODULE_FILES = [
    "drivers/net/virtio_net.ko", "drivers/net/net_failover.ko", "drivers/net/veth.ko", "drivers/net/dummy.ko",
    "drivers/net/tun.ko", "drivers/char/virtio_console.ko", "drivers/char/hw_random/virtio-rng.ko",
    # tc BPF for the offload: the clsact qdisc (sch_ingress; OpenWrt kmod-sched-core) and cls_bpf
    # (kmod-sched-bpf)
    "net/sched/sch_ingress.ko", "net/sched/cls_bpf.ko",
]
PY_PRUNE = [
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "config-3.11-x86_64-linux-gnu",
    "unittest/test", "sqlite3/test", "ctypes/test", "distutils/tests", "venv", "turtle.py",
]
ROOT_PRUNE = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
              "usr/share/bug", "usr/share/bash-completion", "usr/share/zsh", "usr/share/gdb",
              "boot", "usr/share/python3", "etc/init.d", "etc/default", "lib/systemd", "usr/lib/systemd",
              "etc/cron.daily", "etc/logrotate.d", "usr/share/perl5", "usr/share/menu", "etc/ppp/ip-up.d",
              "etc/ppp/ip-down.d", "usr/lib/x86_64-linux-gnu/gconv", "etc/network", "etc/rc.d"]
# /etc/os-release and friends come from OpenWrt's base-files
VERSION = {"%D": "OpenWrt", "%d": "openwrt", "%V": "SNAPSHOT", "%v": "snapshot",
           "%C": "r0-%s (passthrough QEMU test image: glibc, Debian kernel)" % sources.PINS["openwrt"][1][:12],
           "%c": "r0-%s" % sources.PINS["openwrt"][1][:12], "%R": "r0-%s" % sources.PINS["openwrt"][1][:12],
           "%T": "x86", "%S": "x86/64", "%A": "x86_64", "%t": "glibc debian-kernel", "%M": "OpenWrt",
           "%m": "https://openwrt.org/", "%b": "", "%u": "https://openwrt.org/", "%s": "", "%f": "", "%P": "QEMU",
           "%h": "", "%B": "0", "%U": ""}

# OpenWrt packages the image provides: what the opkg status / apk database declares (pkgdb.py), so
# passthrough's packages resolve their dependencies. OpenWrt's own, built from the mirror:
# package -> component (version YYYY.MM.DD~<commit>-r1 as OpenWrt's git packages have it).
PROVIDED_OPENWRT = {
    "base-files": "openwrt", "procd": "procd", "ubus": "ubus", "ubusd": "ubus", "libubus": "ubus",
    "libubox": "libubox", "libblobmsg-json": "libubox", "jshn": "libubox", "libuci": "uci", "uci": "uci",
    "ucode": "ucode", "libucode": "ucode", "ucode-mod-fs": "ucode", "ucode-mod-uci": "ucode", "ucode-mod-ubus": "ucode",
    "ucode-mod-uloop": "ucode", "ucode-mod-math": "ucode", "ucode-mod-log": "ucode", "ucode-mod-struct": "ucode",
    "ucode-mod-socket": "ucode", "ucode-mod-html": "luci", "ubox": "ubox", "logd": "ubox", "jsonfilter": "jsonpath",
    "netifd": "netifd", "firewall4": "firewall4", "rpcd": "rpcd", "rpcd-mod-file": "rpcd", "rpcd-mod-rpcsys": "rpcd",
    "rpcd-mod-ucode": "rpcd", "uhttpd": "uhttpd", "uhttpd-mod-ubus": "uhttpd", "uhttpd-mod-ucode": "uhttpd",
    "opkg": "opkg-lede", "apk": "apk-tools", "liblucihttp": "lucihttp", "liblucihttp-ucode": "lucihttp",
    "luci-base": "luci", "luci-theme-bootstrap": "luci", "luci-mod-status": "luci", "luci-mod-system": "luci",
    "luci-mod-network": "luci", "libudebug": "udebug",
}
# Debian's builds standing in for OpenWrt's packages of the same software: package -> Debian package
# (version: Debian's upstream version, -r<Debian revision>).
PROVIDED_DEBIAN = {
    "busybox": "busybox", "libc": "libc6", "libpthread": "libc6", "librt": "libc6", "libgcc": "libgcc-s1",
    "python3-light": "python3.11-minimal", "python3-base": "python3.11-minimal",
    "python3-logging": "libpython3.11-stdlib", "python3-ctypes": "libpython3.11-stdlib",
    "python3-email": "libpython3.11-stdlib", "python3-urllib": "libpython3.11-stdlib", "python3-yaml": "python3-yaml",
    "nftables-json": "nftables", "libnftables": "libnftables1", "conntrack": "conntrack",
    "libnetfilter-queue": "libnetfilter-queue1", "libnfnetlink": "libnfnetlink0", "libmnl": "libmnl0",
    "libbpf": "libbpf1", "libelf": "libelf1", "ip-full": "iproute2", "tc-full": "iproute2", "libjson-c": "libjson-c5",
    "libnl-tiny": "libnl-3-200", "libopenssl": "libssl3", "zlib": "zlib1g", "strongswan": "strongswan-charon",
    "xl2tpd": "xl2tpd", "ppp": "ppp", "ppp-mod-pppol2tp": "ppp",
}
# the kernel's modules (Debian's 6.1 kernel, loaded from /etc/modules.d): version of the kernel package
PROVIDED_KERNEL = [
    "kernel", "kmod-nf-conntrack", "kmod-nf-nat", "kmod-nft-core", "kmod-nft-nat", "kmod-nft-queue",
    "kmod-nfnetlink", "kmod-nfnetlink-queue", "kmod-nf-conntrack-netlink", "kmod-nf-nathelper",
    "kmod-nf-nathelper-extra", "kmod-nft-offload", "kmod-nft-fib", "kmod-sched-core", "kmod-sched-bpf",
    "kmod-ipsec", "kmod-ipsec4", "kmod-l2tp", "kmod-pppol2tp", "kmod-ppp", "kmod-bridge", "kmod-veth",
    "kmod-crypto-gcm", "kmod-crypto-aead",
]


def debian_version(deb):
    """busybox_1%3a1.35.0-4+deb12u1+b1_amd64.deb -> 1.35.0-r4 (a version opkg and apk both take)."""
    v = os.path.basename(deb).split("_")[1].replace("%3a", ":").split(":")[-1]
    up, _, rev = v.rpartition("-") if "-" in v else (v, "", "0")
    up = re.match(r"[0-9]+(\.[0-9]+)*", up).group(0)
    rev = re.match(r"[0-9]*", rev).group(0) or "0"
    return "%s-r%s" % (up, rev)


def provided(debs, kpkg):
    """[(name, version, arch)] the image declares to opkg and apk."""
    out = [(n, sources.version(c) + "-r1", "x86_64") for n, c in sorted(PROVIDED_OPENWRT.items())]
    out += [(n, debian_version(debs[d]), "x86_64") for n, d in sorted(PROVIDED_DEBIAN.items()) if d in debs]
    out += [(n, debian_version(debs[kpkg]), "x86_64") for n in PROVIDED_KERNEL]
    return out



def log(msg):
    sys.stderr.write("build_image: %s\n" % msg)
    sys.stderr.flush()


def run(cmd, **kw):
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        raise SystemExit("build_image: %s failed (%d): %s" % (" ".join(cmd), e.returncode, (e.stderr or e.stdout or "").strip()[-2000:]))


def sha_files(paths):
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.encode())
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def tree_files(top, exts=None):
    out = []
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        for f in files:
            if exts is None or f.endswith(exts):
                out.append(os.path.join(d, f))
    return out


# --- apt: resolve + download (cached) -------------------------------------------------------------
def apt_depends(args):
    return subprocess.run(["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts", "--no-breaks",
                           "--no-replaces", "--no-enhances"] + args, capture_output=True, text=True)


def depends_of(output):
    """Package names an `apt-cache depends` output names: every Depends/PreDepends alternative
    ("|Depends:" lines) and every provider of a virtual package (the indented lines below "<v>")."""
    names = set()
    for line in output.splitlines():
        if not line.startswith("  "):
            continue
        name = line.strip()
        if not line.startswith("    "):
            name = name.split(":", 1)[1].strip()
        if name and not name.startswith("<"):
            names.add(name[:-4] if name.endswith(":any") else name)
    return names


def resolve(packages):
    """The dependency closure of PACKAGES without DENY and without what only a denied package needs
    (a breadth-first walk that does not enter denied packages: apt-cache --recurse would, e.g.
    libreswan's <host> -> bind9-host -> bind9-libs -> libxml2 -> libicu72, 36 MB)."""
    seen, frontier = set(), sorted(set(packages) - DENY)
    while frontier:
        p = apt_depends(frontier)
        if p.returncode != 0 or not p.stdout.strip():
            if not seen:
                log("apt-cache knows none of the packages; running apt-get update once")
                run(["apt-get", "update"], timeout=600)
                p = apt_depends(frontier)
            if p.returncode != 0:
                raise SystemExit("build_image: apt-cache depends failed: %s" % p.stderr.strip())
        seen.update(frontier)
        frontier = sorted(depends_of(p.stdout) - DENY - seen)
    return sorted(seen)


def kernel_package():
    p = subprocess.run(["apt-cache", "depends", KERNEL_META], capture_output=True, text=True)
    if p.returncode != 0 or "Depends:" not in p.stdout:
        run(["apt-get", "update"], timeout=600)
        p = run(["apt-cache", "depends", KERNEL_META])
    for line in p.stdout.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    raise SystemExit("build_image: cannot resolve %s" % KERNEL_META)


def deb_for(debdir, name):
    hits = [f for f in glob.glob(os.path.join(debdir, name + "_*.deb"))]
    return max(hits, key=os.path.getmtime) if hits else None


def fetch(cache):
    """Return {package: deb path}, downloading what is missing. With a complete cached list no apt
    command runs at all (offline builds once the cache is warm)."""
    debdir = os.path.join(cache, "debs")
    os.makedirs(debdir, exist_ok=True)
    listfile = os.path.join(cache, "packages.json")
    req = hashlib.sha256(json.dumps([KERNEL_META, PACKAGES, sorted(DENY), sorted(PARTIAL)]).encode()).hexdigest()
    if os.path.exists(listfile):
        with open(listfile) as f:
            cached = json.load(f)
        if cached.get("request") == req:
            debs = {n: os.path.join(debdir, fn) for n, fn in cached["debs"].items()}
            if all(os.path.exists(p) for p in debs.values()):
                return debs, cached["kernel"]
    kpkg = kernel_package()
    names = resolve(PACKAGES) + [kpkg] + sorted(PARTIAL)
    missing = [n for n in names if not deb_for(debdir, n)]
    if missing:
        log("apt-get download %d packages" % len(missing))
        run(["apt-get", "download", "-o", "APT::Sandbox::User=root"] + missing, cwd=debdir, timeout=900)
    debs = {}
    for n in names:
        p = deb_for(debdir, n)
        if not p:
            raise SystemExit("build_image: apt-get download gave no .deb for %s" % n)
        debs[n] = p
    tmp = listfile + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"request": req, "kernel": kpkg, "debs": {n: os.path.basename(p) for n, p in debs.items()}}, f, indent=1)
    os.replace(tmp, listfile)
    return debs, kpkg


def kernel_tree(cache, deb):
    """The kernel package extracted once (modules of every kind, vmlinuz) under the cache."""
    dest = os.path.join(cache, "kernel", os.path.basename(deb)[:-4])
    if not os.path.exists(os.path.join(dest, ".done")):
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        run(["dpkg-deb", "-x", deb, dest])
        open(os.path.join(dest, ".done"), "w").close()
    return dest


# --- vmlinux from bzImage --------------------------------------------------------------------------
def extract_vmlinux(bzimage, out):
    """Like the kernel's scripts/extract-vmlinux: the setup header names the compressed payload."""
    with open(bzimage, "rb") as f:
        data = f.read()
    if data[0x202:0x206] != b"HdrS":
        raise SystemExit("build_image: %s is not a bzImage" % bzimage)
    setup_sects = data[0x1F1] or 4
    off, length = struct.unpack_from("<II", data, 0x248)
    payload = data[(setup_sects + 1) * 512 + off:(setup_sects + 1) * 512 + off + length]
    if payload.startswith(b"\xfd7zXZ\x00"):
        raw = lzma.LZMADecompressor().decompress(payload)
    elif payload.startswith(b"\x1f\x8b"):
        import zlib
        raw = zlib.decompressobj(31).decompress(payload)
    else:
        raise SystemExit("build_image: unsupported kernel compression (magic %r)" % payload[:6])
    if raw[:4] != b"\x7fELF":
        raise SystemExit("build_image: decompressed kernel is not ELF")
    with open(out, "wb") as f:
        f.write(raw)


# --- ELF helpers ------------------------------------------------------------------------------------
def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def needed(path):
    p = subprocess.run(["readelf", "-d", "-W", path], capture_output=True, text=True)
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", p.stdout)


LIBDIRS = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib", "lib64", "usr/lib/ipsec"]


def find_lib(root, name):
    for d in LIBDIRS:
        if os.path.lexists(os.path.join(root, d, name)):
            return True
    return False


def modinfo_depends(path):
    with open(path, "rb") as f:
        data = f.read()
    m = re.search(rb"depends=([^\x00]*)\x00", data)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


# --- the build ---------------------------------------------------------------------------------------
class Builder:
    def __init__(self, outdir, cache, python=None, with_packages=True):
        self.outdir = os.path.abspath(outdir)
        self.cache = cache
        self.python = python or sys.executable
        self.with_packages = with_packages
        self.notes = []
        self.userspace = userspace.Userspace(cache)

    def nfq_dir(self):
        p = subprocess.run([self.python, "-c", "import netfilterqueue, os; print(os.path.dirname(netfilterqueue.__file__))"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit("build_image: %s cannot import netfilterqueue (pip install netfilterqueue)" % self.python)
        return p.stdout.strip()

    def inputs_hash(self, debs):
        h = hashlib.sha256()
        h.update(json.dumps([FORMAT, sorted(os.path.basename(p) for p in debs.values()), self.userspace.key,
                             self.with_packages]).encode())
        mine = [os.path.abspath(__file__)] + tree_files(GUEST) + [
            os.path.join(HERE, n) for n in ("openwrt_layout.py", "luci_layout.py", "pkgdb.py") if os.path.exists(os.path.join(HERE, n))]
        pkg = []
        if self.with_packages:  # the packages are built from these
            pkg = [p for p in tree_files(os.path.join(REPO, "openwrt_pkg")) if "/qemu/" not in p and "__pycache__" not in p]
            pkg += tree_files(os.path.join(REPO, "passthrough"), (".py",)) + tree_files(os.path.join(REPO, "nat"), (".py", ".c", ".h"))
            pkg += tree_files(self.nfq_dir(), (".so", ".py"))
        h.update(sha_files(mine + pkg).encode())
        return h.hexdigest()

    def build(self, force=False):
        """Build under an exclusive lock of the cache (concurrent test runs share it)."""
        import fcntl

        os.makedirs(self.cache, exist_ok=True)
        with open(os.path.join(self.cache, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._build(force)

    def _build(self, force=False):
        t0 = time.time()
        debs, kpkg = fetch(self.cache)
        ow = self.userspace.build()
        manifest_path = os.path.join(self.outdir, "manifest.json")
        ih = self.inputs_hash(debs)
        if not force and os.path.exists(manifest_path):
            with open(manifest_path) as f:
                old = json.load(f)
            if old.get("inputs") == ih and all(os.path.exists(os.path.join(self.outdir, n)) for n in ("vmlinux", "initrd.cpio")):
                log("up to date (%s)" % self.outdir)
                return old
        os.makedirs(self.outdir, exist_ok=True)
        work = tempfile.mkdtemp(prefix="pt-qimg-", dir=self.cache)
        try:
            root = os.path.join(work, "root")
            os.makedirs(root)
            ktree = kernel_tree(self.cache, debs[kpkg])
            for name, deb in sorted(debs.items()):
                if name != kpkg and name not in PARTIAL:
                    run(["dpkg-deb", "-x", deb, root])
            for name, files in PARTIAL.items():
                part = os.path.join(work, "partial-" + name)
                run(["dpkg-deb", "-x", debs[name], part])
                for rel in files:
                    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
                    shutil.copy2(os.path.join(part, rel), os.path.join(root, rel))
            kver = os.listdir(os.path.join(ktree, "lib", "modules"))[0]
            self.prune(root)
            placed = openwrt_layout.install_openwrt(root, ow, VERSION)
            openwrt_layout.preinit_conf(root, fs_failsafe_wait_timeout="0", pi_preinit_no_failsafe='"y"')
            placed.update(self.install_luci(root, ow))
            self.links(root)
            nmods = self.modules(root, ktree, kver)
            self.harness(root)
            packages = self.packages(root, work) if self.with_packages else {}
            self.declare_base(root, provided(debs, kpkg))
            self.precompile(root)
            self.check_elf(root)
            run(["ldconfig", "-r", root])
            vmlinux_tmp = os.path.join(work, "vmlinux")
            extract_vmlinux(glob.glob(os.path.join(ktree, "boot", "vmlinuz-*"))[0], vmlinux_tmp)
            cpio_tmp = os.path.join(work, "initrd.cpio")
            nfiles = write_cpio(root, cpio_tmp)
            components = self.components(root, ow, placed, debs, kpkg)
            for n, src in (("vmlinux", vmlinux_tmp), ("initrd.cpio", cpio_tmp)):
                shutil.move(src, os.path.join(self.outdir, n + ".tmp"))
                os.replace(os.path.join(self.outdir, n + ".tmp"), os.path.join(self.outdir, n))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        m = {
            "inputs": ih, "kernel": kver, "kernel_package": kpkg, "modules": nmods, "files": nfiles,
            "build_seconds": round(time.time() - t0, 1), "userspace_build_seconds": ow["build_seconds"],
            "initrd_bytes": os.path.getsize(os.path.join(self.outdir, "initrd.cpio")),
            "vmlinux_bytes": os.path.getsize(os.path.join(self.outdir, "vmlinux")),
            "components": components, "packages": packages, "notes": self.notes,
            "install": "opkg/apk in the guest (files under /root/packages)",
        }
        with open(manifest_path + ".tmp", "w") as f:
            json.dump(m, f, indent=1, sort_keys=True)
        os.replace(manifest_path + ".tmp", manifest_path)
        log("built %s in %.1f s: initrd %.1f MB, %d modules" % (
            self.outdir, m["build_seconds"], m["initrd_bytes"] / 1e6, nmods))
        return m

    def components(self, root, ow, placed, debs, kpkg):
        """The manifest's component table: OpenWrt's (upstream commit, patches, paths in the image)
        and Debian's (package version)."""
        out = {}
        for name, c in ow["components"].items():
            out[name] = {"origin": "openwrt", "source": c["source"], "commit": c["commit"], "patches": c["patches"],
                         "from": c["from"]}
        ELFish = lambda p: is_elf(root + p)  # noqa: E731
        for pkg, paths in placed.items():
            key = {"libubox": "libubox", "jshn": "libubox", "libubus": "ubus", "ubus": "ubus", "ubusd": "ubus",
                   "libuci": "uci", "uci": "uci", "libucode": "ucode", "ucode": "ucode", "ucode-mod-*": "ucode",
                   "libudebug": "udebug", "udebugd": "udebug", "udebug-cli": "udebug", "jsonfilter": "jsonpath",
                   "procd": "procd", "ubox": "ubox", "getrandom": "ubox", "logd": "ubox", "rpcd": "rpcd",
                   "rpcd-mod-*": "rpcd", "uhttpd": "uhttpd", "uhttpd-mod-ubus": "uhttpd", "uhttpd-mod-ucode": "uhttpd",
                   "netifd": "netifd", "firewall4": "firewall4", "opkg": "opkg-lede", "apk": "apk-tools",
                   "liblucihttp": "lucihttp", "liblucihttp-ucode": "lucihttp", "base-files": "openwrt"}.get(pkg)
            if key is None:
                key = "luci" if pkg.startswith("luci") else pkg
            entry = out.setdefault(key, {"origin": "openwrt"})
            entry.setdefault("packages", {})[pkg] = sorted(p for p in paths if ELFish(p)) or sorted(paths)[:12]
        for name, deb in sorted(debs.items()):
            m = re.match(r"[^_]+_([^_]+)_", os.path.basename(deb))
            out["debian:" + name] = {"origin": "debian bookworm", "version": m.group(1).replace("%3a", ":") if m else "?"}
        return out

    def prune(self, root):
        for rel in ROOT_PRUNE:
            shutil.rmtree(os.path.join(root, rel), ignore_errors=True)
        py = os.path.join(root, "usr", "lib", "python3.11")
        for rel in PY_PRUNE:
            p = os.path.join(py, rel)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.unlink(p)
        for d, dirs, files in os.walk(root):
            if "__pycache__" in dirs:
                shutil.rmtree(os.path.join(d, "__pycache__"))
                dirs.remove("__pycache__")
        # Debian's /etc files that OpenWrt's base-files or packages own (passwd, group, shells, ...)
        for rel in ("etc/passwd", "etc/group", "etc/shadow", "etc/hosts", "etc/hostname", "etc/profile",
                    "etc/inittab", "etc/fstab", "etc/os-release", "etc/ppp/options"):
            p = os.path.join(root, rel)
            if os.path.lexists(p) and not os.path.isdir(p):
                os.unlink(p)

    def install_luci(self, root, ow):
        try:
            import luci_layout
        except ImportError:
            self.notes.append("no luci_layout.py yet: image without LuCI")
            return {}
        # the app itself comes with luci-app-passthrough's package (installed in the guest)
        res = luci_layout.install_luci(root, ow["trees"]["luci"], ow["stage"], ow["trees"]["openwrt"], apps=(),
                                       deps=False, rpcd_tree=ow["trees"].get("rpcd"))
        self.notes += res.get("notes", [])
        return res.get("packages", {})

    def links(self, root):
        def put(link, target):
            p = os.path.join(root, link)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if os.path.lexists(p):
                os.unlink(p)
            os.symlink(target, p)

        put("bin/sh", "busybox")
        # Debian's python3.11 searches dist-packages; OpenWrt's python3 packages install into
        # /usr/lib/python3.11/site-packages: one .pth makes Debian's interpreter look there too
        pth = os.path.join(root, "usr", "lib", "python3", "dist-packages", "openwrt-site-packages.pth")
        os.makedirs(os.path.dirname(pth), exist_ok=True)
        with open(pth, "w") as f:
            f.write("/usr/lib/python3.11/site-packages\n")
        os.makedirs(os.path.join(root, "usr", "lib", "python3.11", "site-packages"), exist_ok=True)
        put("bin/ash", "busybox")
        put("usr/bin/python3", "python3.11")
        put("usr/bin/python", "python3.11")
        # busybox applets where no real tool of that name exists (iproute2's ip, OpenWrt's uci,
        # logread, modprobe, ... win); OpenWrt's busybox has the same applets in the same places
        names = set()
        for d in ("bin", "sbin", "usr/bin", "usr/sbin"):
            if os.path.isdir(os.path.join(root, d)):
                names.update(os.listdir(os.path.join(root, d)))
        out = run([os.path.join(root, "bin", "busybox"), "--list-full"],
                  env=dict(os.environ, LD_LIBRARY_PATH=os.path.join(root, "lib", "x86_64-linux-gnu"))).stdout.split()
        for path in out:
            if os.path.basename(path) in names or path in ("linuxrc",):
                continue
            put(path, "/bin/busybox")

    def modules(self, root, ktree, kver):
        """Debian's modules, flat in /lib/modules/<ver>/ (OpenWrt's layout, which kmodloader
        scans), and /etc/modules.d + /etc/modules-boot.d lists as OpenWrt's kmod packages install
        them (AutoLoad): kmodloader loads them at boot and serves request_module as /sbin/modprobe."""
        src = os.path.join(ktree, "lib", "modules", kver)
        kern = os.path.join(src, "kernel")
        allmods = {}
        for p in tree_files(kern, (".ko",)):
            allmods[os.path.basename(p)[:-3].replace("-", "_")] = p
        want = set()
        for d in MODULE_DIRS:
            for p in tree_files(os.path.join(kern, d), (".ko",)):
                if any(x in p for x in MODULE_SKIP):
                    continue
                want.add(p)
        for f in MODULE_FILES:
            if os.path.exists(os.path.join(kern, f)):
                want.add(os.path.join(kern, f))
        todo = list(want)
        while todo:
            for dep in modinfo_depends(todo.pop()):
                p = allmods.get(dep.replace("-", "_"))
                if p is None:
                    self.notes.append("module dependency %s not found" % dep)
                elif p not in want:
                    want.add(p)
                    todo.append(p)
        dst = os.path.join(root, "lib", "modules", kver)
        os.makedirs(dst, exist_ok=True)
        for p in want:
            shutil.copy2(p, os.path.join(dst, os.path.basename(p)))
        for f in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
            shutil.copy2(os.path.join(src, f), os.path.join(dst, f))
        with open(os.path.join(GUEST, "modules.txt")) as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
        boot = [m for m in lines if m.startswith("virtio")]
        rest = [m for m in lines if m and m not in boot]
        for d, mods in (("etc/modules-boot.d", boot), ("etc/modules.d", rest)):
            os.makedirs(os.path.join(root, d), exist_ok=True)
            with open(os.path.join(root, d, "50-pt-image"), "w") as f:
                f.write("".join(m + "\n" for m in mods))
        return len(want)

    def harness(self, root):
        """The test harness (guest/): agent service, VPN lab, lab network defaults."""
        def put(rel, src, mode=0o644):
            openwrt_layout.put_file(root, os.path.join(GUEST, src), "/" + rel, mode)

        put("init", "init", 0o755)  # OpenWrt's initramfs /init: INITRAMFS=1, then procd's /sbin/init
        put("usr/sbin/pt-agent", "pt-agent.py", 0o755)
        put("etc/init.d/pt-agent", "pt-agent.init", 0o755)
        put("usr/sbin/pt-vpnlab", "pt-vpnlab", 0o755)
        put("usr/sbin/pt-interop", "pt-interop", 0o755)
        put("etc/uci-defaults/90-pt-lab", "pt-lab.uci-defaults", 0o644)
        # enable as OpenWrt's image build does: `/etc/init.d/<svc> enable` with IPKG_INSTROOT set
        for init in sorted(glob.glob(os.path.join(root, "etc", "init.d", "*"))):
            self.enable(root, os.path.basename(init))

    def enable(self, root, name):
        """rc.common's enable() with IPKG_INSTROOT: S<START>/K<STOP> links in /etc/rc.d."""
        path = os.path.join(root, "etc", "init.d", name)
        with open(path, errors="replace") as f:
            text = f.read()
        if "/etc/rc.common" not in text.split("\n", 1)[0]:
            return
        rcd = os.path.join(root, "etc", "rc.d")
        os.makedirs(rcd, exist_ok=True)
        for var, letter in (("START", "S"), ("STOP", "K")):
            m = re.search(r"^%s=(\d+)" % var, text, re.M)
            if m:
                link = os.path.join(rcd, "%s%s%s" % (letter, m.group(1), name))
                if not os.path.lexists(link):
                    os.symlink("../init.d/" + name, link)

    def packages(self, root, work):
        """passthrough's packages (build_ipk.py, every format it makes) under /root/packages, and
        the netfilterqueue extension of the builder's python packaged with them."""
        outdir = os.path.join(work, "pkgs")
        build = os.path.join(REPO, "openwrt_pkg", "build_ipk.py")
        helptext = run([self.python, build, "--help"], cwd=REPO, check=False).stdout
        fmt = ["--format", "both"] if "--format" in helptext else []
        p = run([self.python, build, outdir] + fmt, cwd=REPO, check=False)
        if p.returncode != 0:
            raise SystemExit("build_image: build_ipk.py failed (%d): %s" % (p.returncode, (p.stderr or p.stdout)[-2000:]))
        got = {}
        for f in sorted(glob.glob(os.path.join(outdir, "**", "*.*pk"), recursive=True)):
            kind = f.rsplit(".", 1)[1]
            dest = os.path.join(root, "root", "packages", kind, os.path.basename(f))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(f, dest)
            got[os.path.basename(f)] = os.path.getsize(f)
        if not any(n.startswith("python3-netfilterqueue") for n in got):
            # until build_ipk.py packages it: the extension goes where python3-package.mk puts it
            site = os.path.join(root, "usr", "lib", "python3.11", "site-packages")
            os.makedirs(site, exist_ok=True)
            shutil.copytree(self.nfq_dir(), os.path.join(site, "netfilterqueue"),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyx", "*.pxd", "*.pyi"))
            self.notes.append("netfilterqueue copied into site-packages (no python3-netfilterqueue package built)")
        return got

    def declare_base(self, root, base):
        """The image's opkg status and apk database declare what it provides (pkgdb.py)."""
        try:
            import pkgdb
        except ImportError:
            self.notes.append("no pkgdb.py yet: no package database")
            return
        pkgdb.declare_base_opkg(root, base)
        pkgdb.declare_base_apk(root, base)

    ESSENTIAL = ("usr/lib/ipsec/charon", "usr/sbin/swanctl", "usr/sbin/xl2tpd", "usr/sbin/pppd", "usr/libexec/ipsec/pluto",
                 "usr/sbin/ipsec", "usr/bin/certutil", "usr/sbin/pptpd", "usr/sbin/pptpctrl", "usr/sbin/pptp", "usr/sbin/pppoe-server", "usr/sbin/pppoe", "usr/lib/pppd/2.4.9/pppoe.so", "bin/busybox", "usr/bin/python3.11", "sbin/procd", "sbin/init", "sbin/ubusd", "sbin/rpcd", "sbin/netifd", "sbin/uci", "usr/sbin/uhttpd", "usr/bin/ucode", "bin/opkg", "usr/bin/apk", "sbin/logd", "sbin/kmodloader", "usr/sbin/nft", "bin/ip", "sbin/ip", "usr/sbin/conntrack",
                 "lib/x86_64-linux-gnu/libnftables.so.1", "usr/lib/x86_64-linux-gnu/libnftables.so.1")

    def precompile(self, root):
        """Byte-compile the guest's python (stdlib, dist-packages, passthrough) as unchecked-hash
        pycs: the cpio stores mtime 0, so timestamp pycs would never match, and compiling at first
        import under TCG costs ~0.4 s per new command. Needs a 3.11 builder (same magic number)."""
        code = ("import compileall, sys, py_compile\n"
                "if sys.version_info[:2] != (3, 11): sys.exit(3)\n"
                "root = sys.argv[1]\n"
                "for d in sys.argv[2:]:\n"
                "    compileall.compile_dir(root + d, ddir=d, quiet=1, workers=0,\n"
                "        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n")
        dirs = [d for d in ("/usr/lib/python3.11", "/usr/lib/python3/dist-packages")
                if os.path.isdir(root + d)]
        p = run([self.python, "-c", code, root] + dirs, check=False)
        if p.returncode == 3:
            self.notes.append("no precompiled pyc: builder python is not 3.11")
        elif p.returncode != 0:
            self.notes.append("precompile failed: %s" % (p.stderr or p.stdout).strip()[-300:])

    def check_elf(self, root):
        """Every ELF file's NEEDED libraries must be in the image. Files whose libraries were left
        out on purpose (DENY) are deleted and noted; the essential tools and any passthrough or
        netfilterqueue extension must be complete."""
        missing = {}
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu",
                  "usr/lib/python3.11/lib-dynload", "usr/lib/python3/dist-packages", "usr/lib/ipsec", "usr/lib/pppd",
                  "lib", "usr/lib", "usr/lib/ucode", "usr/lib/rpcd", "usr/libexec"):
            for p in tree_files(os.path.join(root, d)):
                if os.path.islink(p) or not is_elf(p):
                    continue
                lost = [n for n in needed(p) if not find_lib(root, n)]
                if lost:
                    missing[os.path.relpath(p, root)] = lost
        fatal = {}
        for rel, lost in sorted(missing.items()):
            if rel not in self.ESSENTIAL and "-packages" not in rel:
                self.notes.append("dropped %s (needs %s)" % (rel, ", ".join(lost)))
                os.unlink(os.path.join(root, rel))
            else:
                fatal[rel] = lost
        if fatal:
            raise SystemExit("build_image: libraries missing in the image: %s" % json.dumps(fatal))



# --- cpio (newc) --------------------------------------------------------------------------------
def write_cpio(root, out):
    """Reproducible newc archive of root (owner root, mtime 0); hard links are stored as copies."""
    n = 0
    ino = 1
    with open(out, "wb") as f:
        def entry(name, mode, data=b"", nlink=1, rdev=(0, 0)):
            nonlocal ino
            hdr = "070701" + "".join("%08X" % v for v in (
                ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0))
            ino += 1
            f.write(hdr.encode() + name.encode() + b"\0")
            f.write(b"\0" * ((4 - (110 + len(name) + 1) % 4) % 4))
            f.write(data)
            f.write(b"\0" * ((4 - len(data) % 4) % 4))

        paths = []
        for d, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(dirs + files):
                paths.append(os.path.join(d, name))
        paths.sort(key=lambda p: os.path.relpath(p, root))
        for p in paths:
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                entry(rel, stat.S_IFLNK | 0o777, os.readlink(p).encode())
            elif stat.S_ISDIR(st.st_mode):
                entry(rel, stat.S_IFDIR | (st.st_mode & 0o7777), nlink=2)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as g:
                    entry(rel, stat.S_IFREG | (st.st_mode & 0o7777), g.read())
            else:
                continue
            n += 1
        # /dev/console must exist before devtmpfs is mounted, for init's stdio
        entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
        entry("TRAILER!!!", 0)
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="download/extract cache (default %(default)s)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the inputs did not change")
    ap.add_argument("--no-packages", action="store_true", help="leave passthrough's packages out of /root/packages")
    a = ap.parse_args(argv)
    os.makedirs(a.cache, exist_ok=True)
    m = Builder(a.outdir, a.cache, with_packages=not a.no_packages).build(force=a.force)
    print(json.dumps({k: m[k] for k in ("kernel", "initrd_bytes", "build_seconds", "modules")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
