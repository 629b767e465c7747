#!/usr/bin/env python3
"""Build OpenWrt's own userspace from upstream sources with the host toolchain (Debian 12, glibc).

    userspace.py [--cache DIR] [--only NAME ...] [--force]     prints the stage directory

Each component (libubox, ubus, uci, ucode, udebug, jsonpath, procd, ubox, rpcd, uhttpd, netifd,
opkg-lede, apk-tools, lucihttp, luci-base's C module) is unpacked at its pinned
commit (sources.py: OPENWRT_SRC mirror or git), patched with `patches/<component>-NNNN-*.patch`
(one change per file, each saying why), configured the way OpenWrt's package Makefile configures
it (same CMake / meson options where they apply to a glibc host) and installed into one staging
DESTDIR (`<cache>/userspace-<key>/stage`, prefix /usr), in dependency order, so later components
link against earlier ones. The stage is cached: rebuilt only when a pin, a patch, this file or
the host compiler changes. Which of the staged files go where in the router image is image.py's
business (it follows each package Makefile's install rules).
"""
import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sources  # noqa: E402

PATCHES = os.path.join(HERE, "patches")
DEFAULT_CACHE = os.environ.get("PT_QEMU_CACHE", "/var/cache/passthrough-qemu")
FORMAT = 1

# Debian packages the build needs (setup.sh installs them; named here for the error message).
BUILD_DEPS = ["cmake", "meson", "ninja-build", "pkg-config", "gcc", "make", "libjson-c-dev", "libssl-dev",
              "zlib1g-dev", "libbsd-dev", "libnl-3-dev", "libnl-route-3-dev", "libnl-genl-3-dev", "libcrypt-dev",
              "lemon", "patch"]

# glibc 2.36 has no strlcpy/strlcat (musl has): libbsd provides them, force-included, so
# _GNU_SOURCE must be set before that first header. Everything else is as on OpenWrt (-Os, no LTO).
COMMON_CFLAGS = "-Os -g -D_GNU_SOURCE -include bsd/string.h"
COMMON_LIBS = "-lbsd"
# The components build with -Werror; code kept warning-free for musl and OpenWrt's gcc warns on
# glibc 2.36 / gcc 12 (and on our _GNU_SOURCE, which sources define again). Our compiler wrapper
# appends -Wno-error after the projects' flags: the warnings stay in the build logs, they do not
# stop the build. (One setting instead of a patch per CMakeLists.)
CC_WRAPPER = '#!/bin/sh\nexec gcc "$@" -Wno-error\n'

# (component, build system, options). Options mirror the package Makefiles' CMAKE_OPTIONS /
# MESON_ARGS: Lua bindings and examples off (OpenWrt builds them as separate packages we do not
# ship), no TLS in uhttpd (no ustream-ssl: the image serves LuCI on plain HTTP inside the lab).
COMPONENTS = [
    ("libubox", "cmake", ["-DBUILD_LUA=OFF", "-DBUILD_EXAMPLES=OFF"]),
    ("ubus", "cmake", ["-DBUILD_LUA=OFF", "-DBUILD_EXAMPLES=OFF", "-DABIVERSION=20230605"]),
    ("uci", "cmake", ["-DBUILD_LUA=OFF"]),
    ("ucode", "cmake", ["-DSOVERSION=0", "-DCOMPILE_SUPPORT=ON", "-DFS_SUPPORT=ON", "-DMATH_SUPPORT=ON",
                        "-DUBUS_SUPPORT=ON", "-DUCI_SUPPORT=ON", "-DULOOP_SUPPORT=ON", "-DLOG_SUPPORT=ON",
                        "-DSTRUCT_SUPPORT=ON", "-DSOCKET_SUPPORT=ON", "-DRESOLV_SUPPORT=ON", "-DIO_SUPPORT=ON",
                        "-DDEBUG_SUPPORT=ON", "-DRTNL_SUPPORT=OFF", "-DNL80211_SUPPORT=OFF",
                        "-DZLIB_SUPPORT=OFF", "-DDIGEST_SUPPORT=OFF"]),
    ("udebug", "cmake", []),
    ("jsonpath", "cmake", ["in-source"]),  # its CMakeLists builds the bundled lemon relative to the source
    ("procd", "cmake", ["-DEARLY_PATH=/usr/sbin:/usr/bin:/sbin:/bin", "-DSECCOMP_SUPPORT=0",
                        "-DUTRACE_SUPPORT=0", "-DJAIL_SUPPORT=0"]),
    ("ubox", "cmake", []),
    ("rpcd", "cmake", ["-DIWINFO_SUPPORT=NO", "-DFILE_SUPPORT=ON", "-DRPCSYS_SUPPORT=ON", "-DUCODE_SUPPORT=ON"]),
    ("uhttpd", "cmake", ["-DTLS_SUPPORT=OFF", "-DLUA_SUPPORT=OFF", "-DUBUS_SUPPORT=ON", "-DUCODE_SUPPORT=ON"]),
    # libnl-3 from Debian instead of libnl-tiny (not in the mirror; patches/netifd-0001); its
    # generator scripts run relative to the source
    ("netifd", "cmake", ["in-source", "-DLIBNL_LIBS=-lnl-genl-3 -lnl-route-3 -lnl-3", "-DDEBUG=1",
                         "cflags=-I/usr/include/libnl3 -DNETIFD_LIBNL3"]),
    ("opkg-lede", "cmake", ["-DBUILD_TESTS=OFF", "-DENABLE_USIGN=OFF", "-DHOST_CPU=x86_64",
                            "-DBUILD_CPU=x86_64", "-DPATH_SPEC=/usr/sbin:/usr/bin:/sbin:/bin",
                            "-DVERSION=%s" % sources.PINS["opkg-lede"][1][:8]]),
    ("apk-tools", "meson", ["-Ddocs=disabled", "-Dhelp=disabled", "-Dlua=disabled", "-Dpython=disabled",
                            "-Dtests=disabled", "-Dzstd=disabled", "-Durl_backend=wget",
                            "-Dcrypto_backend=openssl"]),
    ("lucihttp", "cmake", ["-DBUILD_LUA=OFF", "-DBUILD_UCODE=ON", "-DBUILD_TESTS=OFF"]),
    ("luci-base", "luci-make", []),
    # rpcd-mod-luci (the `luci-rpc` ubus object of LuCI's Network and Wireless pages) is not built:
    # it needs iwinfo's headers (PKG_BUILD_DEPENDS:=iwinfo), which the mirror does not carry.
]
# where a component's source comes from when it lives inside a bigger tree
IN_TREE = {"luci-base": ("luci", "modules/luci-base/src")}
NAMES = [c[0] for c in COMPONENTS]


def log(msg):
    sys.stderr.write("userspace: %s\n" % msg)
    sys.stderr.flush()


class BuildError(SystemExit):
    pass


def patch_files(name):
    if not os.path.isdir(PATCHES):
        return []
    return sorted(os.path.join(PATCHES, f) for f in os.listdir(PATCHES)
                  if f.startswith(name + "-") and f.endswith(".patch")
                  and f[len(name) + 1:len(name) + 5].isdigit())


def compiler_id():
    p = subprocess.run(["gcc", "--version"], capture_output=True, text=True)
    return p.stdout.splitlines()[0] if p.returncode == 0 else "no gcc"


def cache_key(names):
    h = hashlib.sha256()
    srcs = sorted({IN_TREE.get(n, (n,))[0] for n in names})
    h.update(json.dumps([FORMAT, sources.fingerprint(srcs), compiler_id(), COMMON_CFLAGS, CC_WRAPPER,
                         [c for c in COMPONENTS if c[0] in names]]).encode())
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    for n in names:
        for p in patch_files(n):
            with open(p, "rb") as f:
                h.update(os.path.basename(p).encode() + f.read())
    return h.hexdigest()[:16]


class Userspace:
    def __init__(self, cache=DEFAULT_CACHE, only=None):
        self.cache = cache
        self.names = [n for n in NAMES if not only or n in only]
        self.key = cache_key(self.names)
        self.top = os.path.join(cache, "userspace-" + self.key)
        self.stage = os.path.join(self.top, "stage")
        self.src = os.path.join(self.top, "src")
        self.manifest_path = os.path.join(self.top, "manifest.json")

    def manifest(self):
        with open(self.manifest_path) as f:
            return json.load(f)

    def build(self, force=False):
        """Build (or reuse) the stage; returns the manifest."""
        os.makedirs(self.cache, exist_ok=True)
        with open(os.path.join(self.cache, ".userspace.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not force and os.path.exists(self.manifest_path):
                log("up to date (%s)" % self.top)
                return self.manifest()
            return self._build()

    def _build(self):
        t0 = time.time()
        missing = [t for t in ("cmake", "meson", "ninja", "pkg-config", "gcc", "patch") if not shutil.which(t)]
        if missing:
            raise BuildError("userspace: %s not found; the build needs the Debian packages %s (scripts/setup.sh "
                             "installs them)" % (", ".join(missing), " ".join(BUILD_DEPS)))
        shutil.rmtree(self.top, ignore_errors=True)
        os.makedirs(self.stage)
        info = sources.describe()
        trees = {}
        comps = {}
        for name, system, opts in COMPONENTS:
            if name not in self.names:
                continue
            t1 = time.time()
            tree_name, sub = IN_TREE.get(name, (name, ""))
            if tree_name not in trees:
                trees[tree_name] = sources.unpack(tree_name, self.src)
            srcdir = os.path.join(trees[tree_name], sub)
            applied = self.apply_patches(name, srcdir)
            getattr(self, "_" + system.replace("-", "_"))(name, srcdir, opts)
            comps[name] = {"source": tree_name, "commit": info[tree_name]["commit"], "from": info[tree_name]["from"],
                           "patches": applied, "build_seconds": round(time.time() - t1, 1)}
            log("%s built (%.1f s)" % (name, time.time() - t1))
        # the two trees the image takes files from (base-files, package files, LuCI's htdocs)
        for tree_name in ("openwrt", "luci"):
            if tree_name not in trees:
                trees[tree_name] = sources.unpack(tree_name, self.src)
        for name in ("firewall4",):  # no build: ucode scripts and an init script
            trees[name] = sources.unpack(name, self.src)
            comps[name] = {"source": name, "commit": info[name]["commit"], "from": info[name]["from"],
                           "patches": self.apply_patches(name, trees[name]), "build_seconds": 0}
        for n in ("openwrt", "luci"):
            comps.setdefault(n, {"source": n, "commit": info[n]["commit"], "from": info[n]["from"],
                                 "patches": self.apply_patches(n, trees[n]), "build_seconds": 0})
        m = {"key": self.key, "stage": self.stage, "src": self.src, "trees": trees, "components": comps,
             "compiler": compiler_id(), "cflags": COMMON_CFLAGS, "build_seconds": round(time.time() - t0, 1)}
        with open(self.manifest_path + ".tmp", "w") as f:
            json.dump(m, f, indent=1, sort_keys=True)
        os.replace(self.manifest_path + ".tmp", self.manifest_path)
        log("built %d components in %.1f s into %s" % (len(comps), m["build_seconds"], self.stage))
        self.forget_old()
        return m

    def forget_old(self):
        """Stages of earlier inputs (older pins, patches, this file) are never used again."""
        for d in os.listdir(self.cache):
            if d.startswith("userspace-") and os.path.join(self.cache, d) != self.top:
                old = os.path.join(self.cache, d, "manifest.json")
                try:
                    with open(old) as f:
                        same_set = sorted(json.load(f)["components"]) == sorted(self.manifest()["components"])
                except (OSError, ValueError, KeyError):
                    same_set = True
                if same_set:
                    shutil.rmtree(os.path.join(self.cache, d), ignore_errors=True)

    # --- steps ---------------------------------------------------------------------------------
    def apply_patches(self, name, srcdir):
        done = []
        for p in patch_files(name):
            r = subprocess.run(["patch", "-p1", "-N", "-s", "-d", srcdir, "-i", p], capture_output=True, text=True)
            if r.returncode != 0:
                raise BuildError("userspace: patch %s does not apply to %s: %s" % (
                    os.path.basename(p), name, (r.stdout + r.stderr).strip()[-1500:]))
            done.append(os.path.basename(p))
        return done

    def cc(self):
        path = os.path.join(self.top, "cc-no-werror")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(CC_WRAPPER)
            os.chmod(path, 0o755)
        return path

    def env(self):
        inc = os.path.join(self.stage, "usr", "include")
        lib = os.path.join(self.stage, "usr", "lib")
        e = dict(os.environ)
        e["CFLAGS"] = "%s -I%s" % (COMMON_CFLAGS, inc)
        e["LDFLAGS"] = "-L%s -Wl,-rpath-link,%s" % (lib, lib)
        e["LIBRARY_PATH"] = lib
        e["PKG_CONFIG_PATH"] = os.path.join(lib, "pkgconfig")
        e["LC_ALL"] = "C"
        e["CC"] = self.cc()
        return e

    def run(self, name, argv, cwd, env=None):
        logpath = os.path.join(self.top, "logs", name + ".log")
        os.makedirs(os.path.dirname(logpath), exist_ok=True)
        with open(logpath, "a") as out:
            out.write("$ %s\n" % " ".join(argv))
            out.flush()
            r = subprocess.run(argv, cwd=cwd, env=env or self.env(), stdout=out, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            with open(logpath) as f:
                tail = f.read()[-3000:]
            raise BuildError("userspace: %s: `%s` failed (%d); log %s:\n%s" % (name, " ".join(argv), r.returncode,
                                                                             logpath, tail))

    def _cmake(self, name, srcdir, opts):
        build = os.path.join(self.top, "build", name)
        if "in-source" in opts:
            build, opts = srcdir, [o for o in opts if o != "in-source"]
        env = self.env()
        for o in [o for o in opts if o.startswith("cflags=")]:
            env["CFLAGS"] += " " + o[len("cflags="):]
            opts = [x for x in opts if x != o]
        os.makedirs(build, exist_ok=True)
        self.run(name, ["cmake", "-S", srcdir, "-B", build, "-G", "Ninja", "-DCMAKE_INSTALL_PREFIX=/usr",
                        "-DCMAKE_INSTALL_LIBDIR=lib", "-DCMAKE_BUILD_TYPE=None",
                        "-DCMAKE_C_COMPILER=" + self.cc(),
                        "-DCMAKE_PREFIX_PATH=%s/usr" % self.stage, "-DCMAKE_FIND_ROOT_PATH=%s" % self.stage,
                        "-DCMAKE_C_STANDARD_LIBRARIES=%s" % COMMON_LIBS,
                        "-DCMAKE_SKIP_RPATH=ON"] + opts, srcdir, env)
        self.run(name, ["ninja", "-C", build], srcdir, env)
        self.run(name, ["env", "DESTDIR=" + self.stage, "ninja", "-C", build, "install"], srcdir, env)

    def _meson(self, name, srcdir, opts):
        """apk-tools checks for strlcpy itself and carries its own: no libbsd here."""
        build = os.path.join(self.top, "build", name)
        env = self.env()
        env["CFLAGS"] = "-Os -g"
        self.run(name, ["meson", "setup", build, srcdir, "--prefix=/usr", "--libdir=lib", "--buildtype=plain",
                        "-Ddefault_library=shared"] + opts, srcdir, env)
        self.run(name, ["ninja", "-C", build], srcdir, env)
        self.run(name, ["env", "DESTDIR=" + self.stage, "ninja", "-C", build, "install"], srcdir, env)

    def _luci_make(self, name, srcdir, opts):
        """luci-base/src: its own Makefile (core.so for ucode, version.uc), as luci-base's Build/Compile."""
        env = self.env()
        self.run(name, ["make", "-C", srcdir, "clean"], srcdir, env)
        self.run(name, ["make", "-C", srcdir, "CC=" + self.cc(), "CFLAGS=%s -fPIC" % env["CFLAGS"], "FPIC=-fPIC",
                        "LDFLAGS=%s" % env["LDFLAGS"], "LUCI_VERSION=git-%s" % sources.PINS["luci"][1][:12],
                        "LUCI_GITBRANCH=master", "DESTDIR=" + self.stage, "install"], srcdir, env)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=DEFAULT_CACHE)
    ap.add_argument("--only", nargs="*", help="build just these components (and nothing they need!)")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    m = Userspace(a.cache, a.only).build(force=a.force)
    print(m["stage"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
