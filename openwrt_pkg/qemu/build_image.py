#!/usr/bin/env python3
"""Build a small QEMU x86-64 "router" image from Debian bookworm packages, with passthrough in it.

    build_image.py OUTDIR [--cache DIR] [--force] [--no-ipk]

Output (OUTDIR): vmlinux (uncompressed, PVH entry: boots fast under TCG), initrd.cpio
(uncompressed newc initramfs), manifest.json (inputs hash, sizes, build time, what was included).

How: `apt-get download` (cached under --cache, default /var/cache/passthrough-qemu; once cached no
network is needed) + `dpkg-deb -x` of linux-image-amd64 (6.1: nft_queue, esp4, xfrm, l2tp_ppp,
ppp_generic as modules), busybox-static (init + small tools), dash (/bin/sh: busybox ash's `ip`
applet would shadow iproute2), python3.11 minimal + stdlib, nftables, iproute2, conntrack, kmod,
libbpf1 (the BPF offload's loader), and the libraries they need (apt's dependency closure minus a
deny list, then an ELF NEEDED check). Kernel modules: a subset (netfilter, ipv4/6, bridge, l2tp,
xfrm, ppp, crypto, virtio, and tc's clsact + cls_bpf for the offload) plus their `depends=`
closure; modules.dep/alias by the image's own depmod, so the kernel autoloads (request_module ->
/sbin/modprobe) whatever nft asks for.

passthrough goes in the OpenWrt way when openwrt_pkg/build_ipk.py and openwrt_pkg/ipk_install.py
exist (the .ipk is built and unpacked into the root); otherwise the python packages passthrough/
and nat/ are copied directly (manifest "install": "copy"). The netfilterqueue C extension is the
builder's own (this venv's, cpython-311-x86_64-linux-gnu, ABI-compatible with Debian's 3.11), with
libnetfilter-queue1 + libnfnetlink0 from Debian.

Guest side (openwrt_pkg/qemu/guest/): busybox init (inittab), pt-boot (modules, network, fw4-like
masquerade, rc.d start), pt-agent (JSON over virtio-serial), and a TEST SHIM of OpenWrt's
/etc/rc.common + procd helpers (procd itself does not exist in a Debian image).
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
FORMAT = 3  # bump when the image layout changes in a way the inputs hash cannot see

KERNEL_META = "linux-image-amd64"
PACKAGES = [
    "busybox-static", "dash", "python3.11-minimal", "libpython3.11-stdlib", "nftables", "libnftables1",
    "iproute2", "conntrack", "kmod", "libnetfilter-queue1", "libnfnetlink0", "libmnl0", "netbase", "libc6",
    # the BPF offload (nat/bpf.py loads /usr/lib/passthrough/offload.o with libbpf; OpenWrt: libbpf)
    "libbpf1",
    # real L2TP/IPsec peers inside the guest (kernel IPsec, pppd with /dev/ppp): tests/qemu
    "strongswan-charon", "strongswan-swanctl", "libstrongswan", "strongswan-libcharon", "xl2tpd", "ppp",
]
# Pulled in by apt's closure but useless in a RAM-disk router (maintainer scripts, docs, perl).
DENY = {
    "debconf", "cdebconf", "dpkg", "install-info", "tar", "perl", "perl-base", "perl-modules-5.36",
    "libperl5.36", "mailcap", "mime-support", "media-types", "libdebian-installer4", "libnewt0.52",
    "libslang2", "libtextwrap1", "libgdbm6", "libgdbm-compat4", "libdb5.3", "readline-common",
    "debianutils", "libcap2-bin", "libsqlite3-0", "adduser", "passwd", "usrmerge", "usr-is-merged",
    "sysvinit-utils", "init-system-helpers", "lsb-base", "libsemanage2", "libsemanage-common",
    "libfile-find-rule-perl", "libnumber-compare-perl", "libtext-glob-perl", "libpam-modules",
    "libpam-modules-bin", "libpam-runtime", "procps", "libproc2-0", "libelogind0",
}
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
              "usr/share/bug", "usr/share/bash-completion", "usr/share/zsh", "usr/share/gdb", "usr/share/bash-completion",
              "boot", "usr/share/python3", "etc/init.d", "etc/default", "lib/systemd", "usr/lib/systemd",
              "etc/cron.daily", "etc/logrotate.d", "usr/share/perl5", "usr/share/menu",
              "usr/lib/x86_64-linux-gnu/gconv"]


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
    p = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                        "--no-breaks", "--no-replaces", "--no-enhances"] + args, capture_output=True, text=True)
    return p


def resolve(packages):
    p = apt_depends(packages)
    if p.returncode != 0 or not p.stdout.strip():
        log("apt-cache knows none of the packages; running apt-get update once")
        run(["apt-get", "update"], timeout=600)
        p = apt_depends(packages)
        if p.returncode != 0:
            raise SystemExit("build_image: apt-cache depends failed: %s" % p.stderr.strip())
    names = set()
    for line in p.stdout.splitlines():
        if line and not line.startswith((" ", "<")):
            names.add(line.strip())
    return sorted(n for n in names if n not in DENY)


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
    req = hashlib.sha256(json.dumps([KERNEL_META, PACKAGES, sorted(DENY)]).encode()).hexdigest()
    if os.path.exists(listfile):
        with open(listfile) as f:
            cached = json.load(f)
        if cached.get("request") == req:
            debs = {n: os.path.join(debdir, fn) for n, fn in cached["debs"].items()}
            if all(os.path.exists(p) for p in debs.values()):
                return debs, cached["kernel"]
    kpkg = kernel_package()
    names = resolve(PACKAGES) + [kpkg]
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
    def __init__(self, outdir, cache, use_ipk=True, python=None, src=None):
        self.outdir = os.path.abspath(outdir)
        self.cache = cache
        self.src = os.path.abspath(src or os.environ.get("PT_QEMU_SRC") or REPO)
        self.use_ipk = use_ipk
        self.python = python or sys.executable
        self.notes = []

    def nfq_dir(self):
        p = subprocess.run([self.python, "-c", "import netfilterqueue, os; print(os.path.dirname(netfilterqueue.__file__))"],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit("build_image: %s cannot import netfilterqueue (pip install netfilterqueue)" % self.python)
        return p.stdout.strip()

    def inputs_hash(self, debs):
        h = hashlib.sha256()
        h.update(json.dumps([FORMAT, sorted(os.path.basename(p) for p in debs.values())]).encode())
        mine = [os.path.abspath(__file__)] + tree_files(GUEST)
        src = tree_files(os.path.join(self.src, "passthrough"), (".py",)) + tree_files(os.path.join(self.src, "nat"), (".py",))
        extra = tree_files(os.path.join(REPO, "openwrt_pkg"), None) if self.use_ipk else []
        extra = [p for p in extra if "/qemu/" not in p and "__pycache__" not in p and not p.endswith(".ipk")]
        if self.use_ipk:  # the ipk compiles the BPF offload program from this source
            extra += tree_files(os.path.join(REPO, "nat", "bpf"), (".c", ".h"))
        h.update(sha_files(mine + src + extra + tree_files(self.nfq_dir(), (".so", ".py"))).encode())
        h.update(b"ipk" if self.use_ipk else b"copy")
        h.update(self.src.encode())
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
                if name != kpkg:
                    run(["dpkg-deb", "-x", deb, root])
            kver = os.listdir(os.path.join(ktree, "lib", "modules"))[0]
            self.prune(root)
            self.links(root)
            nmods = self.modules(root, ktree, kver)
            install = self.install_passthrough(root, work)
            self.guest_files(root, kver)
            self.precompile(root)
            self.check_elf(root)
            run(["ldconfig", "-r", root])
            vmlinux_tmp = os.path.join(work, "vmlinux")
            extract_vmlinux(glob.glob(os.path.join(ktree, "boot", "vmlinuz-*"))[0], vmlinux_tmp)
            cpio_tmp = os.path.join(work, "initrd.cpio")
            nfiles = write_cpio(root, cpio_tmp)
            for n, src in (("vmlinux", vmlinux_tmp), ("initrd.cpio", cpio_tmp)):
                shutil.move(src, os.path.join(self.outdir, n + ".tmp"))
                os.replace(os.path.join(self.outdir, n + ".tmp"), os.path.join(self.outdir, n))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        m = {
            "inputs": ih, "kernel": kver, "kernel_package": kpkg, "packages": sorted(debs), "modules": nmods,
            "files": nfiles, "install": install, "build_seconds": round(time.time() - t0, 1),
            "initrd_bytes": os.path.getsize(os.path.join(self.outdir, "initrd.cpio")),
            "vmlinux_bytes": os.path.getsize(os.path.join(self.outdir, "vmlinux")), "notes": self.notes,
        }
        with open(manifest_path + ".tmp", "w") as f:
            json.dump(m, f, indent=1)
        os.replace(manifest_path + ".tmp", manifest_path)
        log("built %s in %.1f s: initrd %.1f MB, %d modules, passthrough via %s" % (
            self.outdir, m["build_seconds"], m["initrd_bytes"] / 1e6, nmods, install))
        return m

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

    def links(self, root):
        def put(link, target):
            p = os.path.join(root, link)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if os.path.lexists(p):
                os.unlink(p)
            os.symlink(target, p)

        put("bin/sh", "dash")
        put("usr/bin/python3", "python3.11")
        put("usr/bin/python", "python3.11")
        for d in ("proc", "sys", "dev", "run", "tmp", "root", "var/lib", "var/log", "etc/rc.d", "mnt"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        put("var/run", "../run")
        put("var/lock", "../run/lock")
        # busybox applets where no real tool of that name exists (iproute2 `ip`, kmod, dash win).
        names = set()
        for d in ("bin", "sbin", "usr/bin", "usr/sbin"):
            if os.path.isdir(os.path.join(root, d)):
                names.update(os.listdir(os.path.join(root, d)))
        out = run([os.path.join(root, "bin", "busybox"), "--list-full"]).stdout.split()
        for path in out:
            if os.path.basename(path) in names or path in ("linuxrc",):
                continue
            put(path, "/bin/busybox")
        # kmod's tools are symlinks to /bin/kmod in Debian already; make sure modprobe is there
        for t in ("modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo"):
            if not os.path.lexists(os.path.join(root, "sbin", t)):
                put("sbin/" + t, "/bin/kmod")

    def modules(self, root, ktree, kver):
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
        for p in want:
            q = os.path.join(dst, os.path.relpath(p, src))
            os.makedirs(os.path.dirname(q), exist_ok=True)
            shutil.copy2(p, q)
        for f in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
            shutil.copy2(os.path.join(src, f), os.path.join(dst, f))
        # depmod from the image itself (the host may have no kmod): kmod picks its tool by argv[0].
        env = dict(os.environ, LD_LIBRARY_PATH=":".join(os.path.join(root, d) for d in LIBDIRS))
        ld = os.path.join(root, "lib64", "ld-linux-x86-64.so.2")
        run([ld, "--library-path", env["LD_LIBRARY_PATH"], "--argv0", "depmod", os.path.join(root, "bin", "kmod"),
             "-b", root, kver])
        return len(want)

    def install_passthrough(self, root, work):
        """The OpenWrt way: build passthrough_<ver>_x86_64.ipk with openwrt_pkg/build_ipk.py and install
        it into the root with openwrt_pkg/ipk_install.py (or, while that tool does not exist, by
        unpacking the ipk's data.tar.gz as opkg does offline), then enable the service as an image
        build does. With --src, the python packages of that tree replace the ipk's. Without
        build_ipk.py: copy the packages and use the stand-in init script."""
        site = os.path.join(root, "usr", "lib", "python3", "dist-packages")
        os.makedirs(site, exist_ok=True)
        shutil.copytree(self.nfq_dir(), os.path.join(site, "netfilterqueue"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyx", "*.pxd", "*.pyi"))
        build, inst = (os.path.join(REPO, "openwrt_pkg", n) for n in ("build_ipk.py", "ipk_install.py"))
        if self.use_ipk and os.path.exists(build):
            ipkdir = os.path.join(work, "ipk")
            os.makedirs(ipkdir)
            p = run([self.python, build, ipkdir], cwd=REPO, check=False)
            ipks = [x for x in glob.glob(os.path.join(ipkdir, "**", "*.ipk"), recursive=True)
                    if os.path.basename(x).startswith("passthrough_")]
            if p.returncode != 0 or len(ipks) != 1:
                raise SystemExit("build_image: build_ipk.py failed (%d, %s): %s" % (
                    p.returncode, ipks, (p.stderr or p.stdout)[-2000:]))
            ipk = ipks[0]
            if os.path.exists(inst):
                p = run([self.python, inst, root, ipk], cwd=REPO)
                mode = "ipk (ipk_install.py)"
                self.notes.append("ipk_install.py %s: %s" % (os.path.basename(ipk), (p.stdout + p.stderr).strip()[-500:]))
            else:
                unpack_ipk(ipk, root)
                mode = "ipk (data.tar.gz unpacked by build_image: no ipk_install.py yet)"
            self.notes.append("installed %s" % os.path.basename(ipk))
            postinst = os.path.join(root, "usr", "lib", "opkg", "info", "passthrough.postinst")
            if os.path.exists(postinst):  # as OpenWrt's image builder: postinst with IPKG_INSTROOT set
                p = run(["sh", postinst], env=dict(os.environ, IPKG_INSTROOT=root, PKG_UPGRADE="0"), check=False)
                self.notes.append("postinst with IPKG_INSTROOT: rc %d %s" % (p.returncode, (p.stdout + p.stderr).strip()[-300:]))
            self.enable_if_needed(root)
            if self.src != REPO:
                lib = os.path.join(root, "usr", "lib", "passthrough")
                for pkg in ("passthrough", "nat"):
                    shutil.rmtree(os.path.join(lib, pkg))
                    shutil.copytree(os.path.join(self.src, pkg), os.path.join(lib, pkg),
                                    ignore=shutil.ignore_patterns("__pycache__", "lab"))
                mode += " + python packages from %s" % self.src
            return mode
        for pkg in ("passthrough", "nat"):
            shutil.copytree(os.path.join(self.src, pkg), os.path.join(site, pkg),
                            ignore=shutil.ignore_patterns("__pycache__", "lab"))
        init = os.path.join(root, "etc", "init.d", "passthrough")
        os.makedirs(os.path.dirname(init), exist_ok=True)
        shutil.copy2(os.path.join(GUEST, "passthrough.init"), init)
        os.chmod(init, 0o755)
        os.symlink("../init.d/passthrough", os.path.join(root, "etc", "rc.d", "S95passthrough"))
        os.symlink("../init.d/passthrough", os.path.join(root, "etc", "rc.d", "K10passthrough"))
        entry = os.path.join(root, "usr", "bin", "passthrough")
        with open(entry, "w") as f:
            f.write("#!/usr/bin/python3\nimport sys\nfrom passthrough.cli import main\nsys.exit(main())\n")
        os.chmod(entry, 0o755)
        self.notes.append("copied passthrough/ and nat/ from %s, stand-in init script" % self.src)
        return "copy"

    def enable_if_needed(self, root):
        """What `/etc/init.d/passthrough enable` does in an image build (IPKG_INSTROOT set), if the
        installer's postinst did not: S/K links in /etc/rc.d from START/STOP."""
        init = os.path.join(root, "etc", "init.d", "passthrough")
        if not os.path.exists(init):
            raise SystemExit("build_image: the ipk installed no /etc/init.d/passthrough")
        rcd = os.path.join(root, "etc", "rc.d")
        if any(n.endswith("passthrough") for n in os.listdir(rcd)):
            return
        with open(init) as f:
            text = f.read()
        for var, letter in (("START", "S"), ("STOP", "K")):
            m = re.search(r"^%s=(\d+)" % var, text, re.M)
            if m:
                os.symlink("../init.d/passthrough", os.path.join(rcd, "%s%spassthrough" % (letter, m.group(1))))
        self.notes.append("enabled /etc/init.d/passthrough (rc.d links) after ipk_install.py")

    def guest_files(self, root, kver):
        def put(rel, src=None, text=None, mode=0o644):
            p = os.path.join(root, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if os.path.lexists(p):
                os.unlink(p)
            if src:
                shutil.copy2(os.path.join(GUEST, src), p)
            else:
                with open(p, "w") as f:
                    f.write(text)
            os.chmod(p, mode)

        if os.path.lexists(os.path.join(root, "init")):
            os.unlink(os.path.join(root, "init"))
        os.symlink("/bin/busybox", os.path.join(root, "init"))
        put("etc/inittab", "inittab")
        put("etc/pt-boot", "pt-boot", mode=0o755)
        put("usr/sbin/pt-agent", "pt-agent.py", mode=0o755)
        put("etc/rc.common", "rc.common", mode=0o755)
        put("lib/functions/procd.sh", "procd.sh")
        put("lib/functions.sh", "functions.sh")
        put("sbin/pt-procd-run", "pt-procd-run", mode=0o755)
        put("sbin/uci", "uci", mode=0o755)
        put("sbin/reload_config", "reload_config", mode=0o755)
        put("usr/sbin/pt-vpnlab", "pt-vpnlab", mode=0o755)
        put("etc/pt-modules", "modules.txt")
        put("etc/passwd", text="root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        put("etc/group", text="root:x:0:\nnogroup:x:65534:\n")
        put("etc/hosts", text="127.0.0.1 localhost\n")
        put("etc/hostname", text="pt-router\n")
        put("etc/ld.so.conf", text="include /etc/ld.so.conf.d/*.conf\n")
        put("etc/openwrt_release", text="# test image: Debian packages, not OpenWrt (passthrough QEMU test)\n"
                                        "DISTRIB_ID='pt-qemu'\nDISTRIB_RELEASE='debian-bookworm-%s'\n" % kver)
        # OpenWrt-like network/firewall configs (read by the package's uci-defaults and fw4 include
        # handling in pt-boot); the guest's real network setup is pt-boot's.
        if not os.path.exists(os.path.join(root, "etc", "config", "network")):
            put("etc/config/network", text=(
                "# TEST IMAGE: describes what /etc/pt-boot sets up (no netifd here)\n"
                "config interface 'loopback'\n\toption device 'lo'\n\toption proto 'static'\n"
                "\toption ipaddr '127.0.0.1'\n\toption netmask '255.0.0.0'\n\n"
                "config interface 'lan'\n\toption device 'br-lan'\n\toption proto 'static'\n"
                "\toption ipaddr '192.168.1.1'\n\toption netmask '255.255.255.0'\n\n"
                "config interface 'wan'\n\toption device 'wan'\n\toption proto 'static'\n"
                "\toption ipaddr '203.0.113.1'\n\toption netmask '255.255.255.0'\n"))
        if not os.path.exists(os.path.join(root, "etc", "config", "firewall")):
            put("etc/config/firewall", text=(
                "# TEST IMAGE: no fw4 here; /etc/pt-boot installs table inet fw4 (forward accept,\n"
                "# masquerade on wan) and runs the script includes listed below, as fw4 does.\n"
                "config defaults\n\toption input 'ACCEPT'\n\toption output 'ACCEPT'\n\toption forward 'ACCEPT'\n"))
        cfg = os.path.join(root, "etc", "config", "passthrough")
        if not os.path.exists(cfg):
            put("etc/config/passthrough", text="config passthrough 'global'\n\toption enabled '1'\n")

    ESSENTIAL = ("usr/lib/ipsec/charon", "usr/sbin/swanctl", "usr/sbin/xl2tpd", "usr/sbin/pppd", "bin/busybox", "bin/dash", "usr/bin/python3.11", "usr/sbin/nft", "bin/ip", "sbin/ip", "usr/sbin/conntrack",
                 "bin/kmod", "lib/x86_64-linux-gnu/libnftables.so.1", "usr/lib/x86_64-linux-gnu/libnftables.so.1")

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
        dirs = [d for d in ("/usr/lib/python3.11", "/usr/lib/python3/dist-packages", "/usr/lib/passthrough")
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
                  "usr/lib/python3.11/lib-dynload", "usr/lib/python3/dist-packages", "usr/lib/ipsec", "usr/lib/pppd"):
            for p in tree_files(os.path.join(root, d)):
                if os.path.islink(p) or not is_elf(p):
                    continue
                lost = [n for n in needed(p) if not find_lib(root, n)]
                if lost:
                    missing[os.path.relpath(p, root)] = lost
        fatal = {}
        for rel, lost in sorted(missing.items()):
            if rel not in self.ESSENTIAL and "dist-packages" not in rel:
                self.notes.append("dropped %s (needs %s)" % (rel, ", ".join(lost)))
                os.unlink(os.path.join(root, rel))
            else:
                fatal[rel] = lost
        if fatal:
            raise SystemExit("build_image: libraries missing in the image: %s" % json.dumps(fatal))


def unpack_ipk(ipk, root):
    """opkg's offline install, minus the package database: the ipk (gzip tar, or the older ar
    container) holds data.tar.gz; its files go into root. Maintainer scripts are not run (the
    package's uci-defaults run at first boot, from pt-boot, as on OpenWrt)."""
    import io
    import tarfile

    with open(ipk, "rb") as f:
        blob = f.read()
    members = {}
    if blob.startswith(b"!<arch>\n"):
        p = 8
        while p + 60 <= len(blob):
            name = blob[p:p + 16].decode().strip().rstrip("/")
            size = int(blob[p + 48:p + 58].decode().strip())
            members[name] = blob[p + 60:p + 60 + size]
            p += 60 + size + (size & 1)
    else:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as t:
            for m in t.getmembers():
                if m.isfile():
                    members[m.name.lstrip("./")] = t.extractfile(m).read()
    data = members.get("data.tar.gz")
    if data is None:
        raise SystemExit("build_image: %s has no data.tar.gz" % ipk)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
        for m in t.getmembers():
            name = m.name.lstrip("./")
            if not name or ".." in name.split("/"):
                continue
            dest = os.path.join(root, name)
            if m.isdir():
                os.makedirs(dest, exist_ok=True)
            elif m.issym():
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                if os.path.lexists(dest):
                    os.unlink(dest)
                os.symlink(m.linkname, dest)
            elif m.isfile():
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                if os.path.lexists(dest):
                    os.unlink(dest)
                with open(dest, "wb") as f:
                    f.write(t.extractfile(m).read())
                os.chmod(dest, m.mode & 0o7777)


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
    ap.add_argument("--no-ipk", action="store_true", help="copy the python packages instead of installing the .ipk")
    ap.add_argument("--src", help="take passthrough/ and nat/ from this tree (copied, no ipk); env PT_QEMU_SRC")
    a = ap.parse_args(argv)
    os.makedirs(a.cache, exist_ok=True)
    m = Builder(a.outdir, a.cache, use_ipk=not a.no_ipk, src=a.src).build(force=a.force)
    print(json.dumps({k: m[k] for k in ("kernel", "initrd_bytes", "build_seconds", "install", "modules")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
