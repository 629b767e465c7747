#!/usr/bin/env python3
"""Build passthrough_<ver>_<arch>.ipk and luci-app-passthrough_<ver>_all.ipk without the OpenWrt SDK.

    python3 openwrt_pkg/build_ipk.py OUTDIR [--epoch SECONDS] [--only NAME] [--arch ARCH]

Format: what OpenWrt's scripts/ipkg-build writes (OpenWrt 24.10 and earlier; 25.12 moved to apk):
a gzip-compressed tar holding ./debian-binary ("2.0\n"), ./data.tar.gz and ./control.tar.gz, in
that order. opkg also reads the older Debian-style `ar` container; OpenWrt itself has written the
tar.gz form for years, so that is what this writes (openwrt_pkg/ipk_install.py reads both).

Reproducible: the same sources (and the same clang) give the same bytes. Every tar entry gets the
same mtime (SOURCE_DATE_EPOCH, else the time of the last git commit, else the newest source file),
uid/gid 0 named root, modes from the Makefile's install rules (never from the checkout's umask),
entries sorted by name, GNU tar format; gzip streams carry mtime 0 and no file name. (Only the
zlib version could change the compressed bytes, as with any gzip.)

Single source of truth: name, version, release, license, dependencies, title, description,
conffiles, prerm/postrm and the install layout (which file goes where with which mode) are read
from the feed Makefiles (openwrt_pkg/passthrough/Makefile, openwrt_pkg/luci-app-passthrough/
Makefile), so the SDK build and this one cannot drift apart. The postinst does what OpenWrt's
default_postinst (SDK builds) does: run the uci-defaults, enable and (re)start the service.

Python files shipped: the packages passthrough/ and nat/ (*.py only) into /usr/lib/passthrough,
without passthrough/lab (the namespace test lab: needs scapy, strongSwan and network namespaces,
nothing a router runs; `passthrough lab` is the only command that needs it) and without tests.

The BPF offload program: what the Makefile's Build/Compile compiles with CompileBPF (OpenWrt's
bpf.mk) from a source its Build/Prepare copies in (nat/bpf/offload.c), this compiles with the
host's clang (-target bpfel or bpfeb after --arch: BPF bytecode differs only in byte order, which
is also why the passthrough package is not "all" any more), strips the DWARF (llvm-strip
--strip-debug, as bpf.mk does; BTF stays, libbpf needs it) and ships where the install rule puts
it (/usr/lib/passthrough/offload.o). No clang: a clear error, no package.
"""
import argparse
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PT_DIR = os.path.join(HERE, "passthrough")
LUCI_DIR = os.path.join(HERE, "luci-app-passthrough")
PY_PACKAGES = ("passthrough", "nat")
PY_EXCLUDE = ("passthrough/lab",)
MODES = {"INSTALL_BIN": 0o755, "INSTALL_DATA": 0o644, "INSTALL_CONF": 0o600}
DEFAULT_ARCH = "x86_64"  # the QEMU test router's; OpenWrt package arch names (opkg print-architecture)
# Byte order of OpenWrt's package architectures: these are big-endian, every other one
# (x86_64, i386_*, aarch64_*, arm_*, mipsel_*, mips64el_*, riscv64_*, loongarch64_*) little.
BIG_ENDIAN_ARCHS = ("mips_", "mips64_", "powerpc_", "powerpc64_", "armeb_")


class BuildError(Exception):
    pass


# --- Makefile reading ---------------------------------------------------------------------------
def read_makefile(path):
    """(variables, defines) of an OpenWrt package Makefile: top-level `NAME:=value` assignments and
    the bodies of `define NAME ... endef` blocks (as lists of lines)."""
    variables, defines = {}, {}
    with open(path) as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"define\s+(\S+)\s*$", line)
        if m:
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "endef":
                body.append(lines[i])
                i += 1
            defines[m.group(1)] = body
        else:
            m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?::|\?|\+)?=\s*(.*)$", line)
            if m and not line.startswith(("\t", " ")):
                variables[m.group(1)] = m.group(2).strip()
        i += 1
    return variables, defines


def block_fields(body):
    """KEY:=value fields of a define body, with backslash continuation lines joined."""
    out, cur = {}, None
    for raw in body:
        line = raw.strip()
        if cur is not None:
            out[cur] += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                cur = None
            continue
        m = re.match(r"([A-Z_]+)\s*(?::|\+)?=\s*(.*)$", line)
        if m:
            key, val = m.group(1), m.group(2)
            out[key] = val.rstrip("\\").strip()
            if val.endswith("\\"):
                cur = key
    return out


def depends(spec):
    """OpenWrt DEPENDS -> control Depends: +pkg -> pkg; @SYMBOL and $(VARIABLE) (build-config
    only, e.g. $(BPF_DEPENDS) = @HAS_BPF_TOOLCHAIN) dropped."""
    out = []
    for tok in spec.split():
        if tok.startswith(("@", "$(")):
            continue
        if tok.startswith("+"):
            tok = tok[1:]
        if ":" in tok:  # +CONFIG_SYMBOL:pkg: conditional, the package
            tok = tok.split(":", 1)[1]
        if tok and tok not in out:
            out.append(tok)
    return out


def make_script(body):
    """A define body as shell text ($$ is make's escaped $)."""
    return "\n".join(line.replace("$$", "$") for line in body).strip("\n") + "\n"


# --- package contents -------------------------------------------------------------------------------
class Tree:
    """Files of a package: path (absolute, as installed) -> (mode, bytes or None for a directory)."""

    def __init__(self):
        self.entries = {}

    def add_dir(self, path, mode=0o755):
        path = "/" + path.strip("/")
        while path not in ("/", ""):
            if path not in self.entries:
                self.entries[path] = (mode, None)
            path = os.path.dirname(path)

    def add_file(self, path, data, mode):
        if path in self.entries and self.entries[path][1] is None:
            raise BuildError("%s is a directory" % path)
        self.add_dir(os.path.dirname(path))
        self.entries[path] = (mode, data)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def python_files(root, package):
    """*.py files of a python package below root (sorted), without the excluded subtrees."""
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__"
                             and "%s/%s" % (rel_dir, d) not in PY_EXCLUDE)
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                out.append("%s/%s" % (rel_dir, fn))
    return sorted(out)


# --- the BPF object -----------------------------------------------------------------------------------
def bpf_sources(defines):
    """{object name in $(PKG_BUILD_DIR): repository path of its C source}: the objects Build/Compile
    makes with $(call CompileBPF,$(PKG_BUILD_DIR)/X.c), the sources Build/Prepare copies there
    from $(PT_SRC)."""
    copied = {}
    for raw in defines.get("Build/Prepare", []):
        words = raw.split()
        if len(words) == 3 and words[0] == "$(CP)" and words[1].startswith("$(PT_SRC)/") \
                and words[2].rstrip("/") == "$(PKG_BUILD_DIR)":
            rel = words[1][len("$(PT_SRC)/"):]
            copied[os.path.basename(rel)] = rel
    out = {}
    for raw in defines.get("Build/Compile", []):
        for src in re.findall(r"\$\(call CompileBPF,\$\(PKG_BUILD_DIR\)/([\w.-]+\.c)\s*\)", raw):
            if src not in copied:
                raise BuildError("Build/Compile compiles %s, which Build/Prepare does not copy from $(PT_SRC)" % src)
            out[src[:-2] + ".o"] = copied[src]
    return out


def bpf_target(arch):
    """clang's BPF target for an OpenWrt package architecture: bpfeb or bpfel."""
    return "bpfeb" if arch.startswith(BIG_ENDIAN_ARCHS) else "bpfel"


def _tool(names):
    for n in names:
        path = shutil.which(n)
        if path:
            return path
    return None


def clang_tools():
    """(clang, llvm-strip or None): $CLANG / $LLVM_STRIP, else from PATH (also versioned names)."""
    names = [os.environ["CLANG"]] if os.environ.get("CLANG") else ["clang"] + ["clang-%d" % v for v in range(20, 10, -1)]
    clang = _tool(names)
    if not clang:
        raise BuildError("clang not found: the BPF offload program (nat/bpf/offload.c) is compiled with clang "
                         "(Debian: apt-get install clang libbpf-dev; or set CLANG=/path/to/clang)")
    version = re.match(r"clang(-\d+)?$", os.path.basename(clang))
    version = (version.group(1) or "") if version else ""  # clang-14 -> llvm-strip-14
    names = [os.environ["LLVM_STRIP"]] if os.environ.get("LLVM_STRIP") else ["llvm-strip" + version, "llvm-strip"]
    return clang, _tool(names)


def compile_bpf(src_rel, arch, warn=None):
    """The bytes of src_rel (repository path) compiled for arch's byte order: clang -O2 -g with
    the repository as working directory and its path mapped to '.', so no path of this checkout
    ends up in the object (BTF line info names the source); then llvm-strip --strip-debug. The
    uapi headers are the host's: asm/ from its multiarch directory, and when the target's byte
    order is not the host's an asm/byteorder.h of our own, since the host's would declare the
    host's bit-field order (the IP header's ihl/version nibbles would swap)."""
    clang, strip = clang_tools()
    target = bpf_target(arch)
    with tempfile.TemporaryDirectory(prefix="pt-bpf-") as tmp:
        incs = []
        order = "big" if target == "bpfeb" else "little"
        if order != sys.byteorder:
            os.makedirs(os.path.join(tmp, "asm"))
            with open(os.path.join(tmp, "asm", "byteorder.h"), "w") as f:
                f.write("/* build_ipk.py: %s-endian BPF from a %s-endian host's uapi headers */\n"
                        "#include <linux/byteorder/%s_endian.h>\n" % (order, sys.byteorder, order))
            incs.append("-I" + tmp)
        p = subprocess.run([clang, "-print-multiarch"], capture_output=True, text=True)
        multiarch = p.stdout.strip() if p.returncode == 0 else ""
        if multiarch and os.path.isdir("/usr/include/" + multiarch):
            incs.append("-I/usr/include/" + multiarch)
        out = os.path.join(tmp, "out.o")
        cmd = [clang, "-O2", "-g", "-Wall", "-Werror", "-target", target, "-fdebug-prefix-map=%s=." % REPO] + incs + \
            ["-c", src_rel, "-o", out]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if p.returncode != 0:
            hint = " (Debian: apt-get install libbpf-dev)" if "bpf/bpf_helpers.h' file not found" in p.stderr else ""
            raise BuildError("compiling %s failed%s (%s): %s" % (src_rel, hint, " ".join(cmd),
                                                                (p.stderr or p.stdout).strip()[-2000:]))
        if strip:
            p = subprocess.run([strip, "--strip-debug", out], capture_output=True, text=True)
            if p.returncode != 0:
                raise BuildError("%s --strip-debug failed: %s" % (strip, p.stderr.strip()))
        elif warn:
            warn("llvm-strip not found (Debian: apt-get install llvm): %s ships with its DWARF" % src_rel)
        return _read(out)


def passthrough_tree(variables, defines, arch=DEFAULT_ARCH, warn=None):
    """The data of the passthrough package, from Package/passthrough/install."""
    tree = Tree()
    objects = bpf_sources(defines)
    body = defines.get("Package/%s/install" % variables["PKG_NAME"])
    if not body:
        raise BuildError("no Package/passthrough/install in the Makefile")
    for raw in body:
        words = raw.split()
        if not words:
            continue
        cmd = words[0]
        m = re.match(r"\$\((\w+)\)$", cmd)
        if not m:
            raise BuildError("install rule not understood: %r" % raw)
        verb = m.group(1)
        args = words[1:]
        if verb == "INSTALL_DIR":
            for a in args:
                tree.add_dir(_dest(a))
        elif verb in MODES and len(args) == 2 and args[0].startswith("$(PKG_BUILD_DIR)/"):
            obj = args[0][len("$(PKG_BUILD_DIR)/"):]
            if obj not in objects:
                raise BuildError("install rule not understood (%s is not built): %r" % (obj, raw))
            tree.add_file(_dest(args[1]), compile_bpf(objects[obj], arch, warn), MODES[verb])
        elif verb in MODES:
            if len(args) != 2 or not args[0].startswith("./"):
                raise BuildError("install rule not understood: %r" % raw)
            tree.add_file(_dest(args[1]), _read(os.path.join(PT_DIR, args[0][2:])), MODES[verb])
        elif verb == "CP":
            dest = _dest(args[-1])
            for src in args[:-1]:
                if not src.startswith("$(PKG_BUILD_DIR)/"):
                    raise BuildError("install rule not understood: %r" % raw)
                pkg = src[len("$(PKG_BUILD_DIR)/"):].strip("/")
                if pkg not in PY_PACKAGES:
                    raise BuildError("unexpected copy of %r" % pkg)
                for rel in python_files(REPO, pkg):
                    tree.add_file(dest.rstrip("/") + "/" + rel, _read(os.path.join(REPO, rel)), 0o644)
        else:
            raise BuildError("install rule not understood: %r" % raw)
    return tree


def _dest(arg):
    if not arg.startswith("$(1)/"):
        raise BuildError("install destination must start with $(1)/: %r" % arg)
    return "/" + arg[len("$(1)/"):].strip("/")


def luci_tree():
    """luci.mk layout: htdocs/ -> /www, root/ -> /."""
    tree = Tree()
    for sub, prefix in (("htdocs", "/www"), ("root", "")):
        base = os.path.join(LUCI_DIR, sub)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fn in sorted(filenames):
                src = os.path.join(dirpath, fn)
                rel = os.path.relpath(src, base).replace(os.sep, "/")
                mode = 0o755 if os.stat(src).st_mode & 0o111 else 0o644
                tree.add_file(prefix + "/" + rel, _read(src), mode)
    return tree


# --- scripts ---------------------------------------------------------------------------------------
def init_numbers(data):
    text = data.decode()
    start = re.search(r"^START=(\d+)", text, re.M)
    stop = re.search(r"^STOP=(\d+)", text, re.M)
    return (start.group(1) if start else None), (stop.group(1) if stop else None)


def service_postinst(tree, name):
    """What OpenWrt's default_postinst does for this package, as a self-contained script."""
    lines = ["#!/bin/sh",
             "# %s postinst (openwrt_pkg/build_ipk.py): what OpenWrt's default_postinst does." % name,
             '[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0']
    inits = sorted(p for p in tree.entries if p.startswith("/etc/init.d/") and tree.entries[p][1] is not None)
    defaults = sorted(p for p in tree.entries if p.startswith("/etc/uci-defaults/") and tree.entries[p][1] is not None)
    lines.append('if [ -n "${IPKG_INSTROOT}" ]; then')
    lines.append("\t# image build: the uci-defaults run at first boot; enable the service in the image")
    for p in inits:
        svc = os.path.basename(p)
        start, stop = init_numbers(tree.entries[p][1])
        lines.append('\tmkdir -p "${IPKG_INSTROOT}/etc/rc.d"')
        if start:
            lines.append('\tln -sf ../init.d/%s "${IPKG_INSTROOT}/etc/rc.d/S%s%s"' % (svc, start, svc))
        if stop:
            lines.append('\tln -sf ../init.d/%s "${IPKG_INSTROOT}/etc/rc.d/K%s%s"' % (svc, stop, svc))
    lines.append("\texit 0")
    lines.append("fi")
    for p in defaults:
        lines.append('[ -f %s ] && ( cd /etc/uci-defaults && . %s ) && rm -f %s' % (p, p, p))
    for p in inits:
        lines.append('[ "${PKG_UPGRADE}" = "1" ] || %s enable' % p)
        lines.append("%s enabled && %s restart" % (p, p))
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def service_prerm(tree, name, extra_body):
    lines = ["#!/bin/sh",
             "# %s prerm (openwrt_pkg/build_ipk.py): what OpenWrt's default_prerm does, then the" % name,
             "# package's own prerm from its Makefile.",
             '[ -n "${IPKG_INSTROOT}" ] && exit 0']
    for p in sorted(p for p in tree.entries if p.startswith("/etc/init.d/") and tree.entries[p][1] is not None):
        lines.append("%s stop >/dev/null 2>&1" % p)
        lines.append('[ "${PKG_UPGRADE}" = "1" ] || %s disable' % p)
    if extra_body:
        lines.append("(")
        lines.extend("\t" + ln if ln else ln for ln in make_script(extra_body).rstrip("\n").split("\n")
                     if not ln.startswith("#!"))
        lines.append(")")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


LUCI_POSTINST = """#!/bin/sh
# luci-app postinst (as luci.mk writes it): drop LuCI's caches, let rpcd re-read the ACLs.
[ -n "${IPKG_INSTROOT}" ] || {
	rm -f /tmp/luci-indexcache.*
	rm -rf /tmp/luci-modulecache/
	killall -HUP rpcd 2>/dev/null
	exit 0
}
"""


# --- archives -----------------------------------------------------------------------------------------
def tar_bytes(entries, epoch, sort=True):
    """An uncompressed GNU tar of (name, mode, data-or-None) entries, sorted by name (unless
    sort=False: given order), fixed metadata."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, mode, data in (sorted(entries, key=lambda e: e[0]) if sort else entries):
            ti = tarfile.TarInfo(name)
            ti.mtime = epoch
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            ti.mode = mode
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return raw.getvalue()


def gzip_bytes(data):
    """gzip with mtime 0 and no file name in the header (like `gzip -n`)."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as g:
        g.write(data)
    return out.getvalue()


def ipk_bytes(control_files, tree, epoch):
    """(ipk bytes, installed size). control_files: name -> (mode, bytes)."""
    data_entries = [(".", 0o755, None)]
    for path, (mode, data) in tree.entries.items():
        data_entries.append(("." + path, mode, data))
    data_tar = tar_bytes(data_entries, epoch)
    installed_size = len(data_tar)  # what ipkg-build calls Installed-Size: the uncompressed data tar
    control = control_files["control"][1].replace(b"@INSTALLED_SIZE@", str(installed_size).encode())
    ctl_entries = [(".", 0o755, None)]
    for name, (mode, data) in control_files.items():
        ctl_entries.append(("./" + name, mode, control if name == "control" else data))
    outer = tar_bytes([("./debian-binary", 0o644, b"2.0\n"),
                       ("./data.tar.gz", 0o644, gzip_bytes(data_tar)),
                       ("./control.tar.gz", 0o644, gzip_bytes(tar_bytes(ctl_entries, epoch)))], epoch,
                      sort=False)  # ipkg-build's order
    return gzip_bytes(outer), installed_size


def control_text(fields, description):
    out = []
    for k, v in fields:
        if v:
            out.append("%s: %s" % (k, v))
    desc = description.strip("\n").split("\n") if description else []
    out.append("Description: %s" % (desc[0].strip() if desc else ""))
    for line in desc[1:]:
        out.append(" " + (line.strip() or "."))
    return ("\n".join(out) + "\n").encode()


# --- the two packages -----------------------------------------------------------------------------
def source_epoch():
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return int(env)
    try:
        p = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%ct"], capture_output=True, text=True,
                           timeout=30)
        if p.returncode == 0 and p.stdout.strip():
            return int(p.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    newest = 0
    for top in (HERE,) + tuple(os.path.join(REPO, p) for p in PY_PACKAGES):
        for dirpath, _, filenames in os.walk(top):
            for fn in filenames:
                newest = max(newest, int(os.stat(os.path.join(dirpath, fn)).st_mtime))
    return newest


def build_passthrough(epoch, arch=DEFAULT_ARCH, warn=None):
    variables, defines = read_makefile(os.path.join(PT_DIR, "Makefile"))
    name = variables["PKG_NAME"]
    version = "%s-%s" % (variables["PKG_VERSION"], variables["PKG_RELEASE"])
    pkg = block_fields(defines["Package/%s" % name])
    arch = pkg.get("PKGARCH", arch)  # without PKGARCH an SDK build takes the target's architecture
    tree = passthrough_tree(variables, defines, arch, warn)
    conffiles = [ln.strip() for ln in defines.get("Package/%s/conffiles" % name, []) if ln.strip()]
    for c in conffiles:
        if c not in tree.entries:
            raise BuildError("conffile %s is not installed by the package" % c)
    fields = [("Package", name), ("Version", version), ("Depends", ", ".join(depends(pkg.get("DEPENDS", "")))),
              ("Source", "feeds/passthrough/%s" % name), ("SourceName", name),
              ("License", variables.get("PKG_LICENSE")), ("Section", pkg.get("SECTION")),
              ("SourceDateEpoch", str(epoch)), ("Maintainer", variables.get("PKG_MAINTAINER")),
              ("Architecture", arch), ("Installed-Size", "@INSTALLED_SIZE@")]
    description = pkg.get("TITLE", "") + "\n" + "\n".join(defines.get("Package/%s/description" % name, []))
    control = {"control": (0o644, control_text(fields, description))}
    if conffiles:
        control["conffiles"] = (0o644, ("\n".join(conffiles) + "\n").encode())
    control["postinst"] = (0o755, service_postinst(tree, name).encode())
    control["prerm"] = (0o755, service_prerm(tree, name, defines.get("Package/%s/prerm" % name)).encode())
    if defines.get("Package/%s/postrm" % name):
        control["postrm"] = (0o755, make_script(defines["Package/%s/postrm" % name]).encode())
    data, _ = ipk_bytes(control, tree, epoch)
    return "%s_%s_%s.ipk" % (name, version, arch), data


def build_luci(epoch, arch=None, warn=None):
    variables, _ = read_makefile(os.path.join(LUCI_DIR, "Makefile"))
    name = os.path.basename(LUCI_DIR)
    version = "%s-%s" % (variables["PKG_VERSION"], variables["PKG_RELEASE"])
    arch = variables.get("LUCI_PKGARCH", "all")
    fields = [("Package", name), ("Version", version), ("Depends", ", ".join(depends(variables.get("LUCI_DEPENDS", "")))),
              ("Source", "feeds/passthrough/%s" % name), ("SourceName", name),
              ("License", variables.get("PKG_LICENSE")), ("Section", "luci"),
              ("SourceDateEpoch", str(epoch)), ("Maintainer", variables.get("PKG_MAINTAINER")),
              ("Architecture", arch), ("Installed-Size", "@INSTALLED_SIZE@")]
    control = {"control": (0o644, control_text(fields, variables.get("LUCI_TITLE", name))),
               "postinst": (0o755, LUCI_POSTINST.encode())}
    data, _ = ipk_bytes(control, luci_tree(), epoch)
    return "%s_%s_%s.ipk" % (name, version, arch), data


BUILDERS = {"passthrough": build_passthrough, "luci-app-passthrough": build_luci}


def build(outdir, epoch=None, only=None, arch=DEFAULT_ARCH, warn=None):
    """Build the packages into outdir; returns their paths. arch: the OpenWrt package architecture
    of passthrough (its BPF object's byte order follows it); luci-app-passthrough is "all"."""
    if epoch is None:
        epoch = source_epoch()
    if not re.match(r"^[a-z0-9][a-z0-9_.+-]*$", arch or ""):
        raise BuildError("bad architecture name %r (e.g. x86_64, mips_24kc, aarch64_cortex-a53)" % arch)
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for key in ("passthrough", "luci-app-passthrough"):
        if only and key not in only:
            continue
        fn, data = BUILDERS[key](epoch, arch, warn)
        path = os.path.join(outdir, fn)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir", help="where to write the .ipk files")
    ap.add_argument("--epoch", type=int, help="mtime of every entry (default: SOURCE_DATE_EPOCH, else last git commit)")
    ap.add_argument("--only", action="append", choices=sorted(BUILDERS), help="build only this package")
    ap.add_argument("--arch", default=DEFAULT_ARCH,
                    help="OpenWrt package architecture of passthrough, e.g. mips_24kc (default %(default)s): "
                         "its BPF object is compiled for that byte order")
    args = ap.parse_args(argv)

    def warn(msg):
        print("build_ipk: warning: %s" % msg, file=sys.stderr)
    try:
        paths = build(args.outdir, args.epoch, args.only, args.arch, warn)
    except (BuildError, OSError, KeyError) as e:
        print("build_ipk: %s" % e, file=sys.stderr)
        return 1
    for p in paths:
        print("%s  %s" % (hashlib.sha256(_read(p)).hexdigest(), p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
