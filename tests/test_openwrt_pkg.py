"""The OpenWrt package: reproducible .ipk builds, their layout and control data, the BPF offload
object in it (byte order per architecture, loadable, no checkout paths), the procd init script,
the uci-defaults and fw4 include run against fakes of OpenWrt's tools, the command from an
unpacked tree, `passthrough reload` after a bad UCI edit, and passthrough/uci.py's `uci`
program path (with a fake `uci` built on the native module: Debian has no uci package)."""
import gzip
import hashlib
import io
import json
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tarfile
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "openwrt_pkg")
sys.path.insert(0, PKG)

import build_ipk  # noqa: E402
import ipk_install  # noqa: E402

from passthrough import cli, config as configmod, uci  # noqa: E402
from nat import nftables as nftx  # noqa: E402

FILES = os.path.join(PKG, "passthrough", "files")
VERSION = "0.1.0-1"
PT_IPK = "passthrough_%s_x86_64.ipk" % VERSION  # build_ipk.DEFAULT_ARCH: the package holds a BPF object
LUCI_IPK = "luci-app-passthrough_%s_all.ipk" % VERSION
NFQ_IPK = "python3-netfilterqueue_1.1.0-1_x86_64.ipk"  # from the host's compiled extension (x86_64 only)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("ipk")
    paths = build_ipk.build(str(out))
    return {os.path.basename(p): p for p in paths}


def unpack(ipk):
    """(outer member names in order, outer TarInfos, control files, control infos, data infos, data files)"""
    with open(ipk, "rb") as f:
        blob = f.read()
    outer = tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz")
    infos = outer.getmembers()
    members = {m.name: outer.extractfile(m).read() for m in infos}
    ctl = tarfile.open(fileobj=io.BytesIO(members["./control.tar.gz"]), mode="r:gz")
    data = tarfile.open(fileobj=io.BytesIO(members["./data.tar.gz"]), mode="r:gz")
    ctl_files = {m.name: ctl.extractfile(m).read().decode() for m in ctl.getmembers() if m.isfile()}
    data_files = {m.name: data.extractfile(m).read() for m in data.getmembers() if m.isfile()}
    return {"blob": blob, "outer": infos, "members": members, "ctl_infos": ctl.getmembers(),
            "ctl": ctl_files, "data_infos": data.getmembers(), "data": data_files}


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory, built):
    root = tmp_path_factory.mktemp("rootfs")
    for name in (PT_IPK, LUCI_IPK):
        ipk_install.install(str(root), built[name])
    return root


def py_env(root, **extra):
    env = dict(os.environ)
    env["PATH"] = "%s:/usr/sbin:/usr/bin:/sbin:/bin" % os.path.dirname(sys.executable)
    env["PYTHONPATH"] = str(root / "usr/lib/passthrough")
    env.pop("PASSTHROUGH_LIB", None)
    env.update(extra)
    return env


# --- build ----------------------------------------------------------------------------------------
def test_build_twice_gives_the_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = run([sys.executable, os.path.join(PKG, "build_ipk.py"), str(a)])
    assert r.returncode == 0, r.stderr
    r2 = run([sys.executable, os.path.join(PKG, "build_ipk.py"), str(b)])
    assert r2.returncode == 0, r2.stderr
    assert sorted(os.listdir(a)) == sorted(os.listdir(b)) == sorted([LUCI_IPK, PT_IPK, NFQ_IPK])
    for fn in os.listdir(a):
        assert (a / fn).read_bytes() == (b / fn).read_bytes(), fn
    printed = dict(line.split("  ", 1)[::-1] for line in r.stdout.splitlines())
    for fn in os.listdir(a):
        assert printed[str(a / fn)] == sha(a / fn)
    # the same with an explicit SOURCE_DATE_EPOCH; a different epoch gives different bytes
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    c, d = tmp_path / "c", tmp_path / "d"
    run([sys.executable, os.path.join(PKG, "build_ipk.py"), str(c)], env=env, check=True)
    run([sys.executable, os.path.join(PKG, "build_ipk.py"), str(d), "--epoch", "1700000000"], check=True)
    assert (c / PT_IPK).read_bytes() == (d / PT_IPK).read_bytes()
    assert (c / PT_IPK).read_bytes() != (a / PT_IPK).read_bytes() or build_ipk.source_epoch() == 1700000000


def tree_order(names):
    """GNU tar --sort=name (what ipkg-build uses): each directory's entries sorted, a directory
    followed by its contents, i.e. sorted by path components."""
    return sorted(names, key=lambda n: n.split("/"))


def test_container_format_is_ipkg_build_style(built):
    for name in (PT_IPK, LUCI_IPK):
        u = unpack(built[name])
        blob = u["blob"]
        assert blob[:3] == b"\x1f\x8b\x08"  # gzip, deflate
        assert blob[3] & 0x08 == 0 and blob[4:8] == b"\0\0\0\0"  # gzip -n: no file name, mtime 0
        assert [m.name for m in u["outer"]] == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]
        assert u["members"]["./debian-binary"] == b"2.0\n"
        for inner in ("./data.tar.gz", "./control.tar.gz"):
            z = u["members"][inner]
            assert z[3] & 0x08 == 0 and z[4:8] == b"\0\0\0\0"
        epoch = None
        for m in u["outer"] + u["ctl_infos"] + u["data_infos"]:
            # ipkg-build: tar --numeric-owner (no user names), the files belong to root
            assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", ""), m.name
            epoch = m.mtime if epoch is None else epoch
            assert m.mtime == epoch, m.name
        for infos in (u["ctl_infos"], u["data_infos"]):
            names = [m.name for m in infos]
            assert names == tree_order(names) and names[0] == "." and all(n.startswith("./") for n in names[1:])
        ctl = u["ctl"]["./control"]
        assert "SourceDateEpoch: %d\n" % epoch in ctl


def test_ipk_is_made_by_openwrts_ipkg_build(tmp_path):
    """build_ipk.py stages the package and runs scripts/ipkg-build of the pinned openwrt tree
    (not a copy): a stand-in ipkg-build given as the tool shows it is called with the staged
    directory (CONTROL/ as package-pack.mk writes it) and the epoch."""
    fake = tmp_path / "ipkg-build"
    log = tmp_path / "log"
    fake.write_text("#!/bin/sh\n{ echo \"$@\"; echo \"SDE=$SOURCE_DATE_EPOCH TZ=$TZ\"; ls \"$1/CONTROL\"; "
                    "cat \"$1/CONTROL/control\"; } > %s\nexit 3\n" % log)
    fake.chmod(0o755)
    with pytest.raises(build_ipk.BuildError) as e:
        build_ipk.write_ipk(build_ipk.build_luci(), str(tmp_path), 1700000000, str(fake))
    assert "ipkg-build luci-app-passthrough failed (exit 3" in str(e.value)
    text = log.read_text()
    assert "SDE=1700000000 TZ=UTC" in text and "\npostinst\n" in text
    assert "Package: luci-app-passthrough\n" in text and "Installed-Size: 0\n" in text
    real = build_ipk._pkgdb().ipkg_build_script()
    assert real.endswith("/openwrt/scripts/ipkg-build") and not real.startswith(ROOT + os.sep)
    assert "ipkg-build -- construct a .ipk from a directory" in open(real).read()


def control_fields(text):
    return ipk_install.parse_control(text)


def test_control_data(built):
    u = unpack(built[PT_IPK])
    c = control_fields(u["ctl"]["./control"])
    assert c["Package"] == "passthrough" and c["Version"] == VERSION and c["Architecture"] == "x86_64"
    deps = [d.strip() for d in c["Depends"].split(",")]
    for need in ("python3-light", "python3-logging", "python3-ctypes", "python3-yaml", "python3-netfilterqueue",
                 "nftables-json", "conntrack", "kmod-nfnetlink-queue", "kmod-nft-queue", "kmod-nf-conntrack",
                 "kmod-nf-conntrack-netlink", "kmod-nft-nat", "kmod-nf-nathelper-extra",
                 "libbpf", "kmod-sched-core", "kmod-sched-bpf"):
        assert need in deps, need
    assert not [d for d in deps if d.startswith(("@", "+", "$"))], deps  # $(BPF_DEPENDS) is build-only
    data_tar = gzip.decompress(u["members"]["./data.tar.gz"])
    assert int(c["Installed-Size"]) == len(data_tar)
    assert c["Description"].startswith("VPN passthrough") and "\n " in c["Description"]
    assert u["ctl"]["./conffiles"] == "/etc/config/passthrough\n"
    modes = {m.name: m.mode for m in u["ctl_infos"]}
    assert modes["./postinst"] == modes["./prerm"] == modes["./postrm"] == 0o755
    post = u["ctl"]["./postinst"]
    assert re.search(r'if \[ -n "\$\{IPKG_INSTROOT\}" \]; then', post)
    assert "/etc/init.d/passthrough enable" in post and "/etc/init.d/passthrough restart" in post
    assert ". /etc/uci-defaults/95_passthrough" in post
    assert 'S95passthrough' in post and 'K10passthrough' in post
    assert "/usr/bin/passthrough flush" in u["ctl"]["./prerm"]
    # offline removal (IPKG_INSTROOT): only the image's rc.d links go, as `rc.common disable` does
    prerm_offline = u["ctl"]["./prerm"].split('if [ -n "${IPKG_INSTROOT}" ]; then\n', 1)[1].split("\nfi\n", 1)[0]
    assert 'rm -f "${IPKG_INSTROOT}"/etc/rc.d/S??passthrough "${IPKG_INSTROOT}"/etc/rc.d/K??passthrough' in prerm_offline
    assert "exit 0" in prerm_offline and "/etc/init.d/passthrough stop" not in prerm_offline
    assert "uci -q delete firewall.passthrough" in u["ctl"]["./postrm"]
    lu = unpack(built[LUCI_IPK])
    lc = control_fields(lu["ctl"]["./control"])
    assert lc["Package"] == "luci-app-passthrough" and lc["Version"] == VERSION and lc["Architecture"] == "all"
    assert [d.strip() for d in lc["Depends"].split(",")] == ["luci-base", "passthrough", "ucode-mod-socket"]
    assert "rpcd" in lu["ctl"]["./postinst"]


def test_data_layout(built):
    u = unpack(built[PT_IPK])
    modes = {m.name: m.mode for m in u["data_infos"]}
    kinds = {m.name: m.isdir() for m in u["data_infos"]}
    expect = {"./etc/config/passthrough": 0o600, "./etc/init.d/passthrough": 0o755,
              "./etc/uci-defaults/95_passthrough": 0o755, "./usr/bin/passthrough": 0o755,
              "./usr/share/passthrough/fw4.include": 0o644, "./usr/lib/passthrough/offload.o": 0o644,
              "./usr/share/nftables.d/chain-pre/forward/30-passthrough.nft": 0o644}
    for path, mode in expect.items():
        assert modes.get(path) == mode, (path, oct(modes.get(path, 0)))
    for name, is_dir in kinds.items():
        if is_dir:
            assert modes[name] == 0o755, name
    py = sorted(n[len("./usr/lib/passthrough/"):] for n in u["data"] if n.startswith("./usr/lib/passthrough/")
                and n != "./usr/lib/passthrough/offload.o")
    want = sorted(build_ipk.python_files(ROOT, "passthrough") + build_ipk.python_files(ROOT, "nat"))
    assert py == want
    assert "passthrough/cli.py" in py and "passthrough/uci.py" in py and "nat/kernel.py" in py
    assert not [p for p in py if "/lab/" in p or "__pycache__" in p or not p.endswith(".py")]
    for p in py:
        assert u["data"]["./usr/lib/passthrough/" + p] == open(os.path.join(ROOT, p), "rb").read()
    for n in u["data"]:
        assert not n.startswith(("./tests", "./usr/lib/passthrough/tests")), n
    lu = unpack(built[LUCI_IPK])
    assert sorted(lu["data"]) == ["./usr/share/luci/menu.d/luci-app-passthrough.json",
                                  "./usr/share/rpcd/acl.d/luci-app-passthrough.json",
                                  "./usr/share/rpcd/ucode/luci.passthrough",
                                  "./www/luci-static/resources/view/passthrough.js"]


def test_makefiles_agree_with_the_repository():
    variables, defines = build_ipk.read_makefile(os.path.join(PKG, "passthrough", "Makefile"))
    setup_py = open(os.path.join(ROOT, "setup.py")).read()
    assert 'version="%s"' % variables["PKG_VERSION"] in setup_py
    lv, _ = build_ipk.read_makefile(os.path.join(PKG, "luci-app-passthrough", "Makefile"))
    assert (lv["PKG_VERSION"], lv["PKG_RELEASE"]) == (variables["PKG_VERSION"], variables["PKG_RELEASE"])
    assert "+passthrough" in lv["LUCI_DEPENDS"].split() and lv["LUCI_PKGARCH"] == "all"
    mk = open(os.path.join(PKG, "passthrough", "Makefile")).read()
    assert "include $(TOPDIR)/rules.mk" in mk and "include $(INCLUDE_DIR)/package.mk" in mk
    assert "$(eval $(call BuildPackage,passthrough))" in mk
    # the BPF object is built the way OpenWrt packages build theirs (qosify): bpf.mk's CompileBPF
    # with the target kernel's bpf-headers, per target; so no PKGARCH:=all (byte order)
    assert "include $(INCLUDE_DIR)/bpf.mk" in mk and variables.get("PKG_BUILD_DEPENDS") == "bpf-headers"
    assert mk.index("include $(INCLUDE_DIR)/package.mk") < mk.index("include $(INCLUDE_DIR)/bpf.mk")
    assert "PKGARCH" not in build_ipk.block_fields(defines["Package/passthrough"])
    assert [ln.strip() for ln in defines["Build/Compile"] if ln.strip()] == ["$(call CompileBPF,$(PKG_BUILD_DIR)/offload.c)"]
    assert build_ipk.bpf_sources(defines) == {"offload.o": "nat/bpf/offload.c"}
    assert os.path.isfile(os.path.join(ROOT, "nat", "bpf", "offload.c"))
    assert "$(INSTALL_DATA) $(PKG_BUILD_DIR)/offload.o $(1)/usr/lib/passthrough/offload.o" in [
        ln.strip() for ln in defines["Package/passthrough/install"]]
    assert "/usr/lib/passthrough/offload.o" in open(os.path.join(ROOT, "nat", "bpf.py")).read()  # where it is looked for
    prepare = "\n".join(defines["Build/Prepare"])
    for excluded in build_ipk.PY_EXCLUDE:  # the SDK build ships what build_ipk ships
        assert "$(PKG_BUILD_DIR)/%s" % excluded in prepare
    fields = build_ipk.block_fields(defines["Package/passthrough"])
    deps = fields["DEPENDS"].split()
    assert "@KERNEL_NF_CONNTRACK_TIMEOUT" in deps
    assert {"+libbpf", "+kmod-sched-core", "+kmod-sched-bpf", "$(BPF_DEPENDS)"} <= set(deps)
    for raw in defines["Package/passthrough/install"]:
        for src in re.findall(r"\./files/\S+", raw):
            assert os.path.isfile(os.path.join(PKG, "passthrough", src)), src
    nfq = open(os.path.join(PKG, "python-netfilterqueue", "Makefile")).read()
    assert re.search(r"PKG_HASH:=[0-9a-f]{64}\n", nfq) and "Package/python3-netfilterqueue" in nfq
    assert "+libnetfilter-queue" in nfq


# --- the BPF object ---------------------------------------------------------------------------------
EM_BPF = 247


def elf_sections(blob):
    """(byte order '<' or '>', e_machine, {section name: bytes}) of an ELF64 relocatable object."""
    assert blob[:4] == b"\x7fELF" and blob[4] == 2, "not an ELF64 file"
    e = "<" if blob[5] == 1 else ">"
    machine, = struct.unpack_from(e + "H", blob, 0x12)
    shoff, = struct.unpack_from(e + "Q", blob, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", blob, 0x3A)
    heads = [struct.unpack_from(e + "IIQQQQIIQQ", blob, shoff + i * shentsize) for i in range(shnum)]
    names = blob[heads[shstrndx][4]:heads[shstrndx][4] + heads[shstrndx][5]]
    out = {}
    for h in heads:
        out[names[h[0]:names.index(b"\0", h[0])].decode()] = blob[h[4]:h[4] + h[5]]
    return e, machine, out


def test_bpf_object_is_the_offload_program_little_endian_stripped_without_checkout_paths(built):
    obj = unpack(built[PT_IPK])["data"]["./usr/lib/passthrough/offload.o"]
    order, machine, sections = elf_sections(obj)
    assert (order, machine) == ("<", EM_BPF)  # x86_64 is little-endian: bpfel
    for name in ("tc", ".maps", "license", ".BTF", ".BTF.ext"):  # BTF stays: libbpf reads the maps from it
        assert name in sections, (name, sorted(sections))
    assert not [n for n in sections if n.startswith((".debug", ".rel.debug"))], sorted(sections)  # stripped, as bpf.mk does
    assert sections["license"].rstrip(b"\0") == b"GPL"  # bpf_fib_lookup & co are GPL-only helpers
    for sym in (b"offload_flows", b"offload_policy", b"offload_stats"):  # the maps nat/bpf.py looks up
        assert sym in obj, sym
    assert ROOT.encode() not in obj  # reproducible from any checkout (BTF line info names ./nat/bpf/offload.c)
    assert b"./nat/bpf/offload.c" in obj


def test_bpf_object_of_the_package_loads_into_this_kernel(built, tmp_path):
    """The kernel's verifier accepts the stripped object (maps from BTF, its programs). Loading
    needs CAP_BPF: as for the namespace tests, without root this is an expected failure."""
    if os.geteuid() != 0:
        pytest.xfail("loading a BPF program needs root")
    obj = tmp_path / "offload.o"
    obj.write_bytes(unpack(built[PT_IPK])["data"]["./usr/lib/passthrough/offload.o"])
    from nat import bpf
    prog = bpf.OffloadProgram(str(obj))
    try:
        assert prog.stat_counts() == {"carried": 0, "miss": 0, "policy": 0, "fib": 0, "other_port": 0}
        assert prog.flows.keys() == []
    finally:
        prog.close()


PROBE = """#include <linux/ip.h>
struct iphdr probe __attribute__((section("pt_probe"), used)) = { .version = 4, .ihl = 5, .ttl = 64 };
"""


def test_big_endian_architecture_gets_a_bpfeb_object_with_the_right_bit_fields(tmp_path):
    """--arch mips_24kc (ath79 & co.): the object is big-endian BPF, and struct iphdr's version/ihl
    nibbles sit where the wire has them. The host's little-endian uapi headers alone would swap
    them (offload.c tests ip->ihl), which the last assertion shows."""
    out = tmp_path / "be"
    paths = build_ipk.build(str(out), only=["passthrough"], arch="mips_24kc")
    assert [os.path.basename(p) for p in paths] == ["passthrough_%s_mips_24kc.ipk" % VERSION]
    u = unpack(paths[0])
    assert control_fields(u["ctl"]["./control"])["Architecture"] == "mips_24kc"
    order, machine, sections = elf_sections(u["data"]["./usr/lib/passthrough/offload.o"])
    assert (order, machine) == (">", EM_BPF) and "tc" in sections and ".BTF" in sections
    probe = tmp_path / "probe.c"
    probe.write_text(PROBE)
    for arch in ("mips_24kc", "x86_64", "mipsel_24kc", "aarch64_cortex-a53"):
        order, _, sections = elf_sections(build_ipk.compile_bpf(str(probe), arch))
        assert order == (">" if arch.startswith("mips_") else "<"), arch
        assert sections["pt_probe"][:1] == b"\x45" and sections["pt_probe"][8:9] == b"\x40", (arch, sections["pt_probe"][:12])
    clang, _ = build_ipk.clang_tools()
    multiarch = run([clang, "-print-multiarch"]).stdout.strip()
    r = run([clang, "-target", "bpfeb", "-I/usr/include/" + multiarch, "-c", str(probe), "-o", str(tmp_path / "wrong.o")])
    assert r.returncode == 0, r.stderr
    assert elf_sections((tmp_path / "wrong.o").read_bytes())[2]["pt_probe"][:1] == b"\x54"


def test_build_fails_clearly_without_clang(tmp_path):
    r = run([sys.executable, os.path.join(PKG, "build_ipk.py"), str(tmp_path / "out")],
            env=dict(os.environ, CLANG=str(tmp_path / "no-such-clang")))
    assert r.returncode == 1 and not os.path.exists(tmp_path / "out" / PT_IPK)
    assert "clang not found" in r.stderr and "apt-get install clang" in r.stderr, r.stderr
    r = run([sys.executable, os.path.join(PKG, "build_ipk.py"), str(tmp_path / "luci"), "--only", "luci-app-passthrough"],
            env=dict(os.environ, CLANG=str(tmp_path / "no-such-clang")))
    assert r.returncode == 0 and os.listdir(tmp_path / "luci") == [LUCI_IPK], r.stderr  # nothing to compile there
    r = run([sys.executable, os.path.join(PKG, "build_ipk.py"), str(tmp_path / "x"), "--arch", "../evil"])
    assert r.returncode == 1 and "bad architecture" in r.stderr
    # no llvm-strip: a warning, and the object keeps its DWARF (still a working object)
    r = run([sys.executable, os.path.join(PKG, "build_ipk.py"), str(tmp_path / "nostrip"), "--only", "passthrough"],
            env=dict(os.environ, LLVM_STRIP=str(tmp_path / "no-such-strip")))
    assert r.returncode == 0 and "llvm-strip not found" in r.stderr, r.stderr
    sections = elf_sections(unpack(str(tmp_path / "nostrip" / PT_IPK))["data"]["./usr/lib/passthrough/offload.o"])[2]
    assert ".debug_info" in sections and ".BTF" in sections


# --- scripts ----------------------------------------------------------------------------------------
def shell_scripts(built):
    out = {}
    for name in os.listdir(FILES):
        if name != "passthrough.config":
            out[name] = open(os.path.join(FILES, name)).read()
    for ipk in (PT_IPK, LUCI_IPK):
        u = unpack(built[ipk])
        for n in ("./postinst", "./prerm", "./postrm"):
            if n in u["ctl"]:
                out[ipk + n[1:]] = u["ctl"][n]
    return out


def test_shell_scripts_parse(built, tmp_path):
    shells = [["sh", "-n"]]
    if shutil.which("busybox"):  # OpenWrt's shell is busybox ash
        shells.append(["busybox", "sh", "-n"])
    scripts = shell_scripts(built)
    assert len(scripts) >= 7
    for name, text in scripts.items():
        p = tmp_path / name.replace("/", "_")
        p.write_text(text)
        for sh in shells:
            r = run(sh + [str(p)])
            assert r.returncode == 0, (name, sh, r.stderr)


def test_init_script_is_procd_style():
    text = open(os.path.join(FILES, "passthrough.init")).read()
    assert text.startswith("#!/bin/sh /etc/rc.common\n")
    for line in ("USE_PROCD=1", "START=95", "STOP=10"):
        assert re.search(r"^%s$" % line, text, re.M), line
    assert 'procd_add_config_trigger "config.change" "passthrough"' in text
    assert "procd_set_param respawn" in text
    assert "procd_set_param stdout 1" in text and "procd_set_param stderr 1" in text
    assert not re.search(r"^stop_service", text, re.M)  # SIGTERM is the daemon's business


FAKE_RC = r"""
# a tiny stand-in for OpenWrt's /etc/rc.common + procd.sh: record what the init script asks for
procd_open_instance() { echo "open_instance $*"; }
procd_set_param() { echo "param $*"; }
procd_append_param() { echo "append $*"; }
procd_close_instance() { echo "close_instance"; }
procd_add_reload_trigger() { echo "reload_trigger $*"; }
procd_add_config_trigger() { echo "config_trigger $*"; }
procd_send_signal() { echo "send_signal $*"; }
start() { echo "start called"; }
"""


def init_harness(tmp_path, prog_script):
    """Source the init script after the fake rc.common, with PROG replaced by prog_script."""
    init = open(os.path.join(FILES, "passthrough.init")).read()
    init = init.replace("PROG=/usr/bin/passthrough", "PROG=%s" % prog_script)
    (tmp_path / "init").write_text(init)
    (tmp_path / "rc").write_text(FAKE_RC)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    logger = bin_dir / "logger"
    logger.write_text('#!/bin/sh\necho "logger $*" >> %s/logger.log\n' % tmp_path)
    logger.chmod(0o755)
    env = dict(os.environ, PATH="%s:/usr/bin:/bin" % bin_dir)
    return env


def test_init_script_start_and_triggers(tmp_path):
    env = init_harness(tmp_path, "/usr/bin/passthrough")
    r = run(["sh", "-c", ". ./rc; . ./init; start_service; service_triggers"], cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "open_instance passthrough"
    assert "param command /usr/bin/passthrough run --config /etc/config/passthrough --no-syslog" in lines
    assert "param respawn 3600 5 5" in lines
    assert "param stdout 1" in lines and "param stderr 1" in lines
    assert "close_instance" in lines
    # procd signals the daemon itself on a passthrough config change (no rc.common run per change)
    assert lines[-1] == ('config_trigger config.change passthrough /bin/ubus call service signal '
                         '{"name":"passthrough","instance":"passthrough","signal":1}')
    assert "PROCD_RELOAD_DELAY=250" in open(os.path.join(FILES, "passthrough.init")).read()


def test_init_reload_is_a_sighup_through_procd(tmp_path):
    """reload_service runs no client: procd signals the instance (the daemon's SIGHUP handler
    re-reads the config; tests/qemu checks it under the real procd, refusal logged)."""
    env = init_harness(tmp_path, "/usr/bin/passthrough")
    r = run(["sh", "-c", ". ./rc; . ./init; reload_service"], cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["send_signal passthrough passthrough HUP"]


# --- a fake `uci` program on top of passthrough.uci (staging in a save dir, like the real one) -----
FAKE_UCI = r'''#!%(python)s
import json, os, sys
sys.path.insert(0, %(root)r)
from passthrough import uci as U

args = sys.argv[1:]
log = os.environ.get("FAKE_UCI_LOG")
if log:
    with open(log, "a") as f:
        f.write(json.dumps(args) + "\n")
confdir, savedir, quiet = "/etc/config", os.environ.get("FAKE_UCI_SAVEDIR", "/tmp/.uci"), False
while args and args[0].startswith("-"):
    o = args.pop(0)
    if o == "-c":
        confdir = args.pop(0)
    elif o == "-t":
        savedir = args.pop(0)
    elif o == "-q":
        quiet = True

def fail(msg):
    if not quiet:
        sys.stderr.write("uci: %%s\n" %% msg)
    sys.exit(1)

def staged(config):
    p = os.path.join(savedir, config)
    if not os.path.exists(p):
        return []
    return [tuple(json.loads(l)) for l in open(p) if l.strip()]

def session(config):
    u = U.Uci(confdir, cli=False)
    for op in staged(config):
        u._do(config, op)
    return u

def stage(config, op):
    os.makedirs(savedir, exist_ok=True)
    with open(os.path.join(savedir, config), "a") as f:
        f.write(json.dumps(list(op)) + "\n")

def split(ptr):
    value = None
    if "=" in ptr:
        ptr, value = ptr.split("=", 1)
    parts = ptr.split(".", 2)
    return parts + [None] * (3 - len(parts)), value

def do(argv):
    cmd = argv[0]
    if cmd == "commit":
        for config in argv[1:]:
            u = session(config)
            u.commit(config)
            try:
                os.remove(os.path.join(savedir, config))
            except OSError:
                pass
        return
    if cmd == "revert":
        try:
            os.remove(os.path.join(savedir, argv[1]))
        except OSError:
            pass
        return
    if cmd == "add":
        config, stype = argv[1], argv[2]
        u = session(config)
        name = U.anon_name(len(u.load(config).sections) + 1, stype)
        stage(config, ("add", stype, name))
        print(name)
        return
    (config, section, option), value = split(argv[1])
    u = session(config)
    pkg = u.load(config)
    if cmd == "get":
        v = pkg.get(section, option)
        if v is None:
            fail("Entry not found")
        print(" ".join(v) if isinstance(v, list) else v)
        return
    s = pkg.section(section)
    if cmd == "set":
        if option is None:
            stage(config, ("set_section", s.name if s else section, value))
        else:
            if s is None:
                fail("Invalid argument")
            stage(config, ("set", s.name, option, value))
    elif cmd in ("add_list", "del_list"):
        if s is None:
            fail("Invalid argument")
        stage(config, (cmd, s.name, option, value))
    elif cmd == "delete":
        if s is None or (option is not None and pkg.get(section, option) is None):
            fail("Entry not found")
        stage(config, ("delete", s.name, option))
    else:
        fail("unknown command %%s" %% cmd)

if args and args[0] == "batch":  # like uci: a failing line does not stop the batch
    for line in sys.stdin:
        words = line.split()
        if words:
            try:
                do(words)
            except SystemExit:
                pass
else:
    do(args)
'''


@pytest.fixture
def fake_uci(tmp_path):
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    p = bin_dir / "uci"
    p.write_text(FAKE_UCI % {"python": sys.executable, "root": ROOT})
    p.chmod(0o755)
    return bin_dir


def test_uci_module_prefers_the_uci_program(tmp_path, fake_uci, monkeypatch):
    conf = tmp_path / "config"
    conf.mkdir()
    original = "# keep me\nconfig passthrough 'global'\n\toption enabled '1'\n"
    (conf / "passthrough").write_text(original)
    log = tmp_path / "uci.log"
    monkeypatch.setenv("PATH", "%s:%s" % (fake_uci, os.environ["PATH"]))
    monkeypatch.setenv("FAKE_UCI_LOG", str(log))
    u = uci.Uci(str(conf))
    assert u.cli == str(fake_uci / "uci")
    u.set("passthrough", "global", "enabled", "0")
    u.set("passthrough", "global", "wan_device", "eth1")
    name = u.add("passthrough", "rule")
    u.add_list("passthrough", name, "port", "500")
    u.set("passthrough", name, "proto", ["udp", "esp"])
    assert u.get("passthrough", "global", "enabled") == "0"  # pending, visible to reads
    assert (conf / "passthrough").read_text() == original  # not written before commit
    u.commit("passthrough")
    got = uci.load(str(conf / "passthrough"))
    assert got.get("global", "enabled") == "0" and got.get("global", "wan_device") == "eth1"
    assert got.get(name, "port") == ["500"] and got.get(name, "proto") == ["udp", "esp"]
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(c[:2] == ["-c", str(conf)] and c[2] == "-t" for c in calls)
    savedirs = {c[3] for c in calls}
    assert len(savedirs) == 1 and not savedirs & {"/tmp/.uci"}  # a private save dir
    assert [c[4] for c in calls] == ["set", "set", "add", "add_list", "delete", "add_list", "add_list", "commit"]
    assert calls[0][5:] == ["passthrough.global.enabled=0"]
    assert u.get("passthrough", name, "proto") == ["udp", "esp"]
    # a value the program refuses surfaces as UciError; revert drops what is pending
    u.set("passthrough", "global", "enabled", "1")
    u.revert("passthrough")
    assert u.get("passthrough", "global", "enabled") == "0"
    with pytest.raises(uci.UciError):
        u._cli(["delete", "passthrough.nope.x"])
    # cli=False forces the native writer even with a uci program on PATH
    n = uci.Uci(str(conf), cli=False)
    assert n.cli is None
    n.set("passthrough", "global", "enabled", "1")
    n.commit("passthrough")
    assert "\toption enabled '1'\n" in (conf / "passthrough").read_text()
    assert len(log.read_text().splitlines()) == len(calls) + 3  # set, revert, failed delete only


def test_uci_defaults_adapt_to_the_network_and_register_the_fw4_include(tmp_path, fake_uci):
    conf = tmp_path / "config"
    conf.mkdir()
    shutil.copy(os.path.join(FILES, "passthrough.config"), conf / "passthrough")
    (conf / "firewall").write_text("config defaults\n\toption input 'REJECT'\n")
    script = open(os.path.join(FILES, "passthrough.uci-defaults")).read()
    # point the script's `uci` calls at our config dir through a wrapper
    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    (wrapper / "uci").write_text('#!/bin/sh\nexec %s/uci -c %s "$@"\n' % (fake_uci, conf))
    (wrapper / "uci").chmod(0o755)
    env = dict(os.environ, PATH="%s:/usr/bin:/bin" % wrapper, FAKE_UCI_SAVEDIR=str(tmp_path / "save"))

    def scenario(network):
        (conf / "network").write_text(network)
        shutil.copy(os.path.join(FILES, "passthrough.config"), conf / "passthrough")
        r = run(["sh", "-c", script], env=env)
        assert r.returncode == 0, r.stderr
        return uci.load(str(conf / "passthrough")), uci.load(str(conf / "firewall"))

    pt, fw = scenario("config interface 'lan'\n\toption device 'br-lan'\n"
                      "config interface 'wan'\n\toption device 'eth1'\n\toption proto 'dhcp'\n")
    assert pt.get("global", "wan_device") == "eth1" and pt.get("global", "lan_device") == "br-lan"
    assert fw.get("passthrough") == "include"
    assert fw.get("passthrough", "type") == "script" and fw.get("passthrough", "fw4_compatible") == "1"
    assert fw.get("passthrough", "path") == "/usr/share/passthrough/fw4.include"
    assert fw.get("@defaults[0]", "input") == "REJECT"
    # comments of the shipped file survive (native writer)
    assert "# '0': drop forwarded L2TP" in (conf / "passthrough").read_text()
    pt, fw = scenario("config interface 'wan'\n\toption device 'wan'\n\toption proto 'pppoe'\n")
    assert pt.get("global", "wan_device") == "pppoe-wan"
    assert len([s for s in fw.sections if s.type == "include"]) == 1  # re-running does not duplicate
    pt, _ = scenario("config interface 'lan'\n\toption device 'br-lan'\n")  # no wan: keep the default
    assert pt.get("global", "wan_device") == "wan"
    configmod.load(str(conf / "passthrough"))  # the result is a valid config


# --- the unpacked tree ------------------------------------------------------------------------------
def test_command_runs_from_the_unpacked_tree(rootfs):
    env = py_env(rootfs)
    wrapper = str(rootfs / "usr/bin/passthrough")
    r = run([wrapper, "--help"], env=env)
    assert r.returncode == 0, r.stderr
    assert "run" in r.stdout and "reload" in r.stdout and "status" in r.stdout and "render" in r.stdout
    r = run(["python3", "-c", "import passthrough, nat; print(passthrough.__file__); print(nat.__file__)"], env=env,
            cwd=str(rootfs))
    assert r.stdout.split() == [str(rootfs / "usr/lib/passthrough/passthrough/__init__.py"),
                                str(rootfs / "usr/lib/passthrough/nat/__init__.py")]
    conf = str(rootfs / "etc/config/passthrough")
    r = run([wrapper, "render", "policy", "--config", conf], env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == nftx.render_policy(configmod.load(conf))
    assert r.stdout.startswith("table inet %s {" % nftx.POLICY_TABLE) and "drop" not in r.stdout
    # PASSTHROUGH_LIB points the wrapper at a tree without PYTHONPATH
    env2 = py_env(rootfs, PASSTHROUGH_LIB=str(rootfs / "usr/lib/passthrough"))
    env2.pop("PYTHONPATH")
    r = run([wrapper, "render", "fastpath", "--config", conf], env=env2)
    assert r.returncode == 0 and "table ip" in r.stdout, r.stderr
    r = run([wrapper, "status", "--json", "--socket", str(rootfs / "no.sock")], env=env)
    assert r.returncode == 1 and "no daemon answers" in r.stderr


def test_wrapper_is_not_shadowed_by_the_current_directory(rootfs, tmp_path):
    fake = tmp_path / "passthrough"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "cli.py").write_text("raise SystemExit('SHADOWED')\n")
    r = run([str(rootfs / "usr/bin/passthrough"), "--help"], env=py_env(rootfs), cwd=str(tmp_path))
    assert r.returncode == 0 and "SHADOWED" not in r.stdout + r.stderr, r.stderr


def test_installer_conffiles_status_and_refusals(tmp_path, built):
    root = tmp_path / "root"
    ipk_install.install(str(root), built[PT_IPK])
    conf = root / "etc/config/passthrough"
    shipped = conf.read_bytes()
    status = (root / "usr/lib/opkg/status").read_text()
    assert "Package: passthrough\n" in status and " /etc/config/passthrough %s" % hashlib.md5(shipped).hexdigest() in status
    info = root / "usr/lib/opkg/info"
    assert sorted(os.listdir(info)) == ["passthrough.conffiles", "passthrough.control", "passthrough.list",
                                        "passthrough.postinst", "passthrough.postrm", "passthrough.prerm"]
    assert os.stat(info / "passthrough.postinst").st_mode & 0o777 == 0o755
    listed = (info / "passthrough.list").read_text().split()
    assert "/usr/bin/passthrough" in listed and "/usr/lib/passthrough/passthrough/cli.py" in listed
    assert os.stat(conf).st_mode & 0o777 == 0o600
    # the admin's edited config is kept on reinstall, the package's copy lands beside it
    conf.write_text("config passthrough 'global'\n\toption l2tp_passthrough '0'\n")
    ipk_install.install(str(root), built[PT_IPK])
    assert "l2tp_passthrough '0'" in conf.read_text()
    assert (root / "etc/config/passthrough-opkg").read_bytes() == shipped
    assert (root / "usr/lib/opkg/status").read_text().count("Package: passthrough\n") == 1
    # the Debian-style ar container is read too
    u = unpack(built[PT_IPK])
    ar = b"!<arch>\n"
    for name in ("debian-binary", "control.tar.gz", "data.tar.gz"):
        data = u["members"]["./" + name]
        ar += (name + "/").ljust(16).encode() + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) \
            + b"100644".ljust(8) + str(len(data)).ljust(10).encode() + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
    (tmp_path / "ar.ipk").write_bytes(ar)
    assert ipk_install.install(str(tmp_path / "root2"), str(tmp_path / "ar.ipk")) == "passthrough"
    assert (tmp_path / "root2/usr/bin/passthrough").exists()
    # members escaping the root are refused
    evil_data = tar_of([(".", 0o755, None), ("./../escape", 0o644, b"x")])
    ctl = tar_of([("./control", 0o644, b"Package: evil\nVersion: 1\n")])
    outer = tar_of([("./debian-binary", 0o644, b"2.0\n"), ("./data.tar.gz", 0o644, gzip.compress(evil_data)),
                    ("./control.tar.gz", 0o644, gzip.compress(ctl))])
    (tmp_path / "evil.ipk").write_bytes(gzip.compress(outer))
    r = run([sys.executable, os.path.join(PKG, "ipk_install.py"), str(tmp_path / "root3"), str(tmp_path / "evil.ipk")])
    assert r.returncode == 1 and "outside the root" in r.stderr
    assert not (tmp_path / "escape").exists()


def tar_of(entries):
    """An uncompressed tar of (name, mode, bytes or None for a directory) entries."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, mode, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = mode
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return raw.getvalue()


def fw4_include_harness(tmp_path, rootfs, config_text, flowtables=""):
    """The include as fw4 runs it (sh -c '... . PATH'), with its absolute paths moved into rootfs,
    a fake nft that keeps its input (and lists `flowtables` for `nft list flowtables`) and a fake
    logger."""
    conf = tmp_path / "passthrough"
    conf.write_text(config_text)
    inc = open(os.path.join(FILES, "passthrough.fw4.include")).read()
    inc = inc.replace("/usr/bin/passthrough", str(rootfs / "usr/bin/passthrough"))
    inc = inc.replace("/etc/config/passthrough", str(conf))
    (tmp_path / "fw4.include").write_text(inc)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "flowtables").write_text(flowtables)
    (bin_dir / "nft").write_text('#!/bin/sh\n[ "$*" = "list flowtables" ] && exec cat %s/flowtables\n'
                                 'cat > %s/nft.in\necho "$*" > %s/nft.args\n' % (tmp_path, tmp_path, tmp_path))
    (bin_dir / "logger").write_text('#!/bin/sh\necho "$*" >> %s/logger.log\n' % tmp_path)
    for p in ("nft", "logger"):
        (bin_dir / p).chmod(0o755)
    env = py_env(rootfs)
    env["PATH"] = "%s:%s" % (bin_dir, env["PATH"])
    cmd = ["sh", "-c", "exec 9>&-; config() { echo 'You cannot use UCI in firewall includes!' >&2; exit 1; }; "
           ". '%s'" % (tmp_path / "fw4.include")]
    return run(cmd, env=env)


def test_fw4_include_installs_the_policy_table(tmp_path, rootfs):
    r = fw4_include_harness(tmp_path, rootfs, "config passthrough 'global'\n\toption l2tp_passthrough '0'\n")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "nft.args").read_text().split() == ["-f", "-"]
    text = (tmp_path / "nft.in").read_text()
    cfg = configmod.Config({"l2tp_passthrough": "0"})
    assert text == nftx.replace_table("inet", nftx.POLICY_TABLE, nftx.render_policy(cfg))
    assert "udp dport 1701" in text and "drop" in text
    assert not (tmp_path / "logger.log").exists()


def test_fw4_include_keeps_the_table_on_a_bad_config(tmp_path, rootfs):
    r = fw4_include_harness(tmp_path, rootfs, "config passthrough 'global'\n\toption l2tp_passthrough 'maybe'\n")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "nft.in").exists()
    log = (tmp_path / "logger.log").read_text()
    assert "l2tp_passthrough" in log and "policy table left as it was" in log


def test_fw4_include_warns_of_a_flowtable(tmp_path, rootfs):
    listing = "table inet fw4 {\n\tflowtable ft {\n\t\thook ingress priority filter\n\t\tdevices = { eth0, eth1 }\n\t}\n}\n"
    r = fw4_include_harness(tmp_path, rootfs, "config passthrough 'global'\n", flowtables=listing)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "nft.args").read_text().split() == ["-f", "-"]  # the policy table all the same
    log = (tmp_path / "logger.log").read_text()
    assert "daemon.warn" in log and "flowtable is present" in log and "flow_offloading=0" in log, log


@pytest.mark.lab  # needs root: nft --check talks to the kernel
def test_fw4_include_text_is_valid_nft(tmp_path, rootfs):
    fw4_include_harness(tmp_path, rootfs, "config passthrough 'global'\n\toption l2tp_passthrough '0'\n"
                                          "\toption ipsec_passthrough '0'\n\toption pptp_passthrough '0'\n")
    r = run(["nft", "-c", "-f", str(tmp_path / "nft.in")])
    assert r.returncode == 0, r.stderr


# --- `passthrough reload` after a bad UCI edit ---------------------------------------------------
class StubKernel:
    backend = "nft"

    def __init__(self, cfg, nft=None):
        self.cfg = cfg
        self.calls = []

    def __getattr__(self, name):
        def record(*args):
            self.calls.append(name)
            return 0
        return record

    def map_elements(self, name):
        return []

    def flowtables(self):
        return []


def test_reload_after_a_bad_uci_edit_prints_the_error(tmp_path, monkeypatch):
    from passthrough import daemon

    monkeypatch.setattr(daemon, "Kernel", StubKernel)
    conf = tmp_path / "passthrough"
    shutil.copy(os.path.join(FILES, "passthrough.config"), conf)
    sock = str(tmp_path / "ctl.sock")
    d = daemon.Daemon(str(conf), sock)
    d._open_control()
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            r, _, _ = select.select([d.ctl], [], [], 0.05)
            if r:
                d._serve_control()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        u = uci.Uci(str(tmp_path), cli=False)

        def reload():
            return run([sys.executable, "-m", "passthrough.cli", "reload", "--config", str(conf), "--socket", sock],
                       cwd=ROOT)

        u.set("passthrough", "global", "udp_timeout", "30")  # shorter than L2TP's HELLO: refused
        u.commit("passthrough")
        r = reload()
        assert r.returncode == 1
        assert "reload refused, last good config kept" in r.stderr and "udp_timeout" in r.stderr, r.stderr
        assert "120..86400" in r.stderr
        assert d.cfg.udp_timeout == 180
        text = conf.read_text()
        conf.write_text(text.replace("option enabled '1'", "option enabled '1"))  # a syntax error
        r = reload()
        assert r.returncode == 1 and "line " in r.stderr and "unterminated quote" in r.stderr, r.stderr
        conf.write_text(text)
        u.set("passthrough", "global", "udp_timeout", "240")
        u.set("passthrough", "global", "l2tp_passthrough", "0")
        u.commit("passthrough")
        r = reload()
        assert r.returncode == 0 and "reloaded in" in r.stdout and "l2tp" in r.stdout, (r.stdout, r.stderr)
        assert d.cfg.udp_timeout == 240 and d.cfg.kind_enabled("l2tp") is False
        assert "apply_policy" in d.kernel.calls
    finally:
        stop.set()
        t.join(2)
        d.ctl.close()


def test_status_columns_are_the_cli_ones():
    # the LuCI view and README describe these; keep the CLI the reference
    assert cli.STATUS_COLUMNS == ("kind", "lan_ip", "lan_port", "wan_port", "remote_ip", "remote_port", "key",
                                  "state", "age", "packets")


def test_daemon_warns_of_flowtables_once_per_change(tmp_path, monkeypatch, caplog):
    from passthrough import daemon

    listings = [[], [("inet", "fw4", "ft", ["eth0"])], [("inet", "fw4", "ft", ["eth0"])], None, []]

    class FtKernel(StubKernel):
        def flowtables(self):
            return listings.pop(0)

    monkeypatch.setattr(daemon, "Kernel", FtKernel)
    conf = tmp_path / "passthrough"
    shutil.copy(os.path.join(FILES, "passthrough.config"), conf)
    d = daemon.Daemon(str(conf), str(tmp_path / "ctl.sock"))
    caplog.set_level("INFO", logger="passthrough")
    seen = [d._check_flowtables() for _ in range(5)]
    assert seen == [[], [("inet", "fw4", "ft", ["eth0"])], [("inet", "fw4", "ft", ["eth0"])],
                    [("inet", "fw4", "ft", ["eth0"])], []]  # a failed listing keeps what was known
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "inet fw4 ft (eth0)" in warnings[0], warnings
    assert any("flowtables gone" in r.getMessage() for r in caplog.records)
    assert d._check_flowtables(max_age=60) == []  # status asks at most every max_age s: no listing
