"""passthrough's packages in both formats, made by OpenWrt's own tools (scripts/ipkg-build, the real
`apk mkpkg` of apk-tools built from the mirror), and installed for real on the host into scratch
image roots: openwrt_pkg/qemu/pkgdb.py declares the base packages an image provides in the opkg
status / apk database, then the real opkg-cl (--offline-root) and apk (--root) install the three
packages with their dependencies resolved (no --force-depends, no --nodeps), and remove them.

Needs root (the package tools write root-owned image files) and userspace.py's cached stage of
libubox + opkg-lede + apk-tools (built on first use, ~20 s; the image builder's full stage is
used when it exists)."""
import io
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "openwrt_pkg")
sys.path.insert(0, PKG)
sys.path.insert(0, os.path.join(PKG, "qemu"))

import build_ipk  # noqa: E402
import pkgdb  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the package tools write root-owned image files")

EPOCH = 1700000000
NAMES = ["passthrough", "luci-app-passthrough", "python3-netfilterqueue"]
IPKS = ["passthrough_0.1.0-1_x86_64.ipk", "luci-app-passthrough_0.1.0-1_all.ipk",
        "python3-netfilterqueue_1.1.0-1_x86_64.ipk"]
APKS = ["passthrough-0.1.0-r1.apk", "luci-app-passthrough-0.1.0-r1.apk", "python3-netfilterqueue-1.1.0-r1.apk"]
SITE = "usr/lib/python3.11/site-packages"
# what the QEMU router image provides: every dependency of the three packages (their Makefiles)
BASE = ["python3-light", "python3-logging", "python3-ctypes", "python3-yaml", "nftables-json", "conntrack",
        "kmod-nfnetlink-queue", "kmod-nft-queue", "kmod-nft-nat", "kmod-nf-conntrack", "kmod-nf-conntrack-netlink",
        "kmod-nf-nathelper-extra", "libbpf", "kmod-sched-core", "kmod-sched-bpf", "libnetfilter-queue",
        "luci-base", "ucode-mod-socket", "rpcd", "base-files", "busybox"]


def base(without=()):
    return [(n, "1.0-r1", "x86_64") for n in BASE if n not in without]


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 300)
    return subprocess.run(cmd, **kw)


@pytest.fixture(scope="session")
def tools():
    return pkgdb.find_tools()


@pytest.fixture(scope="module")
def pkgs(tools, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkgs")
    paths = build_ipk.build(str(out), epoch=EPOCH, fmt="both", tools=tools)
    got = {os.path.basename(p): p for p in paths}
    assert sorted(got) == sorted(IPKS + APKS), sorted(got)
    return got


@pytest.fixture
def trap(tmp_path, monkeypatch):
    """PATH starts with stand-ins for the commands a maintainer script would run on a live
    router (uci, the init script's helpers, killall, nft, passthrough, ...): offline (IPKG_INSTROOT
    set) none may run, since it would act on the build host."""
    bin_dir = tmp_path / "trap-bin"
    bin_dir.mkdir()
    log = tmp_path / "trap.log"
    for name in ("uci", "killall", "nft", "passthrough", "procd", "ubus", "service", "rpcd", "conntrack", "tc"):
        (bin_dir / name).write_text("#!/bin/sh\necho \"%s $*\" >> %s\nexit 0\n" % (name, log))
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (bin_dir, os.environ["PATH"]))
    yield log
    assert not log.exists(), "a maintainer script ran a live-system command offline: %s" % log.read_text()
    for host in ("/etc/rc.d/S95passthrough", "/etc/rc.d/K10passthrough", "/etc/init.d/passthrough",
                 "/etc/config/passthrough", "/usr/lib/passthrough"):
        assert not os.path.lexists(host), host


def files_below(root, skip=()):
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames:
            rel = os.path.relpath(os.path.join(dirpath, n), root)
            if not rel.startswith(tuple(skip)):
                out.add(rel)
        for n in dirnames:
            if os.path.islink(os.path.join(dirpath, n)):
                out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


def adbdump(tools, path):
    r = run([tools.apk, "adbdump", path], env=tools.env())
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)  # YAML; modes like 0755 read as octal ints


def apk_files(doc):
    """{path: (mode, user, group, mtime or None)} of an adbdump'd package, directories too."""
    out = {}
    for d in doc["paths"]:
        name = d.get("name", "")
        out[name + "/"] = (d["acl"]["mode"], d["acl"]["user"], d["acl"]["group"], None)
        for f in d.get("files", []):
            out[(name + "/" if name else "") + f["name"]] = (f["acl"]["mode"], f["acl"]["user"], f["acl"]["group"],
                                                             f["mtime"])
    return out


def ipk_data(path):
    with tarfile.open(path, "r:gz") as outer:
        data = outer.extractfile("./data.tar.gz").read()
        ctl = outer.extractfile("./control.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
        files = {m.name[2:]: m for m in t.getmembers() if not m.isdir()}
    with tarfile.open(fileobj=io.BytesIO(ctl), mode="r:gz") as t:
        control = {m.name[2:]: t.extractfile(m).read().decode() for m in t.getmembers() if m.isfile()}
    return files, control


# --- building -------------------------------------------------------------------------------------
def test_both_formats_are_byte_identical_when_built_twice(tools, tmp_path):
    outs = []
    for d in ("a", "b"):
        r = run([sys.executable, os.path.join(PKG, "build_ipk.py"), "--format", "both", str(tmp_path / d),
                 "--epoch", str(EPOCH)])
        assert r.returncode == 0, r.stderr
        outs.append(tmp_path / d)
    assert sorted(os.listdir(outs[0])) == sorted(os.listdir(outs[1])) == sorted(IPKS + APKS)
    for fn in os.listdir(outs[0]):
        assert (outs[0] / fn).read_bytes() == (outs[1] / fn).read_bytes(), fn
    # --format apk makes only the .apk files; another epoch gives other bytes (mtimes are in them)
    r = run([sys.executable, os.path.join(PKG, "build_ipk.py"), "--format", "apk", str(tmp_path / "c"),
             "--epoch", str(EPOCH + 1)])
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path / "c")) == sorted(APKS)
    for fn in APKS:
        assert (tmp_path / "c" / fn).read_bytes() != (outs[0] / fn).read_bytes(), fn


def test_apk_metadata_files_modes_and_scripts(tools, pkgs):
    for fn in APKS:
        r = run([tools.apk, "verify", "--allow-untrusted", pkgs[fn]], env=tools.env())
        assert r.returncode == 0 and "OK" in r.stdout, (fn, r.stdout, r.stderr)
    pt = adbdump(tools, pkgs["passthrough-0.1.0-r1.apk"])
    info = pt["info"]
    assert (info["name"], info["version"], info["arch"]) == ("passthrough", "0.1.0-r1", "x86_64")
    assert (info["license"], info["origin"], info["maintainer"]) == (
        "NOASSERTION", "feeds/passthrough/passthrough", "passthrough developers")
    variables, defines = build_ipk.read_makefile(os.path.join(PKG, "passthrough", "Makefile"))
    want = build_ipk.depends(build_ipk.block_fields(defines["Package/passthrough"])["DEPENDS"])
    assert sorted(info["depends"]) == sorted(want)
    assert "python3-netfilterqueue" in info["depends"] and "libbpf" in info["depends"]
    assert not [d for d in info["depends"] if d.startswith(("+", "@", "$"))]
    assert info["description"].startswith("Lets several LAN hosts")
    files = apk_files(pt)
    for path, mode in {"etc/config/passthrough": 0o600, "etc/init.d/passthrough": 0o755,
                       "etc/uci-defaults/95_passthrough": 0o755, "usr/bin/passthrough": 0o755,
                       "usr/lib/passthrough/offload.o": 0o644, "usr/lib/passthrough/passthrough/cli.py": 0o644,
                       "usr/share/passthrough/fw4.include": 0o644, "lib/apk/packages/passthrough.list": 0o644,
                       "lib/apk/packages/passthrough.conffiles": 0o644,
                       "lib/apk/packages/passthrough.conffiles_static": 0o644}.items():
        assert files[path][0] == mode, (path, oct(files[path][0]))
    for path, (mode, user, group, mtime) in files.items():
        assert (user, group) == ("root", "root"), path
        assert mtime in (None, EPOCH), path  # SOURCE_DATE_EPOCH on every file
        if path.endswith("/"):
            assert mode == 0o755, path
    assert not [p for p in files if "/lab/" in p or "__pycache__" in p]
    # the same data as the .ipk, plus package-pack.mk's lib/apk/packages files
    ipk_files, _ = ipk_data(pkgs["passthrough_0.1.0-1_x86_64.ipk"])
    assert {p for p in files if not p.endswith("/") and not p.startswith("lib/apk/")} == set(ipk_files)
    for p, m in ipk_files.items():
        assert files[p][0] == m.mode & 0o7777, p
    scripts = pt["scripts"]
    assert sorted(scripts) == ["post-deinstall", "post-install", "post-upgrade", "pre-deinstall"]
    _, ctl = ipk_data(pkgs["passthrough_0.1.0-1_x86_64.ipk"])
    assert scripts["post-install"] == ctl["postinst"] and scripts["pre-deinstall"] == ctl["prerm"]
    assert scripts["post-deinstall"] == ctl["postrm"]
    assert scripts["post-upgrade"].startswith("#!/bin/sh\nexport PKG_UPGRADE=1\n") and \
        scripts["post-upgrade"].endswith(ctl["postinst"])

    lu = adbdump(tools, pkgs["luci-app-passthrough-0.1.0-r1.apk"])
    assert (lu["info"]["arch"], lu["info"]["version"]) == ("noarch", "0.1.0-r1")
    assert sorted(lu["info"]["depends"]) == ["luci-base", "passthrough", "ucode-mod-socket"]
    assert sorted(lu["scripts"]) == ["post-install", "post-upgrade"] and "rpcd" in lu["scripts"]["post-install"]
    assert "www/luci-static/resources/view/passthrough.js" in apk_files(lu)

    nq = adbdump(tools, pkgs["python3-netfilterqueue-1.1.0-r1.apk"])
    assert (nq["info"]["name"], nq["info"]["version"], nq["info"]["arch"]) == (
        "python3-netfilterqueue", "1.1.0-r1", "x86_64")
    assert sorted(nq["info"]["depends"]) == ["libnetfilter-queue", "python3-light"]
    assert (nq["info"]["license"], nq["info"]["url"]) == ("MIT", "https://github.com/oremanj/python-netfilterqueue")
    nf = apk_files(nq)
    so = SITE + "/netfilterqueue/_impl.cpython-311-x86_64-linux-gnu.so"
    assert nf[so][0] == 0o755 and nf[SITE + "/netfilterqueue/__init__.py"][0] == 0o644
    assert SITE + "/netfilterqueue-1.1.0.dist-info/METADATA" in nf
    assert not [p for p in nf if p.endswith((".pyx", ".pxd", ".pyi", ".pyc", "RECORD"))]
    assert "scripts" not in nq


def test_python3_netfilterqueue_ipk(pkgs):
    files, ctl = ipk_data(pkgs["python3-netfilterqueue_1.1.0-1_x86_64.ipk"])
    c = dict(ln.split(": ", 1) for ln in ctl["control"].splitlines() if ": " in ln and not ln.startswith(" "))
    assert (c["Package"], c["Version"], c["Architecture"]) == ("python3-netfilterqueue", "1.1.0-1", "x86_64")
    assert c["Depends"] == "python3-light, libnetfilter-queue"
    assert (c["Source"], c["SourceName"], c["License"], c["LicenseFiles"]) == (
        "feeds/passthrough/python-netfilterqueue", "python-netfilterqueue", "MIT", "LICENSE.txt")
    assert sorted(ctl) == ["control"]  # no maintainer scripts
    so = files[SITE + "/netfilterqueue/_impl.cpython-311-x86_64-linux-gnu.so"]
    assert so.mode & 0o777 == 0o755 and so.size < 400000  # stripped (unstripped it is ~800 kB)


def test_build_refuses_bad_input_clearly(tmp_path):
    script = os.path.join(PKG, "build_ipk.py")
    r = run([sys.executable, script, "--format", "deb", str(tmp_path / "x")])
    assert r.returncode == 2 and "invalid choice: 'deb'" in r.stderr
    r = run([sys.executable, script, str(tmp_path / "x"), "--only", "python3-netfilterqueue", "--arch", "mips_24kc"])
    assert r.returncode == 1 and "not for mips_24kc" in r.stderr and "SDK" in r.stderr
    r = run([sys.executable, script, str(tmp_path / "x"), "--only", "python3-netfilterqueue",
             "--nfq-python", str(tmp_path / "no-python")])
    assert r.returncode == 1 and "none found" in r.stderr
    # without --only, a target that cannot have the host's extension gets the other packages and a warning
    r = run([sys.executable, script, str(tmp_path / "m"), "--arch", "mips_24kc"])
    assert r.returncode == 0, r.stderr
    assert "python3-netfilterqueue not built" in r.stderr
    assert sorted(os.listdir(tmp_path / "m")) == ["luci-app-passthrough_0.1.0-1_all.ipk",
                                                 "passthrough_0.1.0-1_mips_24kc.ipk"]
    with pytest.raises(build_ipk.BuildError, match="unknown format"):
        build_ipk.build(str(tmp_path / "y"), fmt="rpm")


# --- installing with the real tools -------------------------------------------------------------------
def test_opkg_installs_the_ipks_with_dependencies_resolved_and_removes_them(tools, pkgs, tmp_path, trap):
    root = tmp_path / "root"
    root.mkdir()
    assert pkgdb.declare_base_opkg(str(root), base(), epoch=EPOCH) == BASE
    before = files_below(root)
    pkgdb.opkg_install(str(root), [pkgs[f] for f in IPKS], tools)  # no --force-depends
    installed = pkgdb.opkg_list_installed(str(root), tools)
    assert {n: installed[n] for n in NAMES} == {"passthrough": "0.1.0-1", "luci-app-passthrough": "0.1.0-1",
                                                "python3-netfilterqueue": "1.1.0-1"}
    assert installed["libbpf"] == "1.0-r1" and len(installed) == len(BASE) + 3
    status = (root / "usr/lib/opkg/status").read_text()
    assert status.count("Status: install user installed") == 3
    for rel in ("usr/bin/passthrough", "etc/config/passthrough", "usr/lib/passthrough/offload.o",
                "usr/share/rpcd/ucode/luci.passthrough", SITE + "/netfilterqueue/__init__.py"):
        assert (root / rel).is_file(), rel
    assert os.stat(root / "etc/config/passthrough").st_mode & 0o777 == 0o600
    # the postinst ran offline: rc.d links in the image, the uci-defaults left for the first boot
    assert os.readlink(root / "etc/rc.d/S95passthrough") == "../init.d/passthrough"
    assert os.readlink(root / "etc/rc.d/K10passthrough") == "../init.d/passthrough"
    assert (root / "etc/uci-defaults/95_passthrough").is_file()
    # the packaged extension loads (the host runs the router's python3.11 on glibc x86_64)
    r = run([sys.executable, "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import netfilterqueue; "
             "print(netfilterqueue.__file__); netfilterqueue.NetfilterQueue()", str(root / SITE)])
    assert r.returncode == 0 and r.stdout.startswith(str(root / SITE)), r.stderr
    # prepare_rootfs's touch-up of the status
    pkgdb.finish_opkg_status(str(root), EPOCH)
    status = (root / "usr/lib/opkg/status").read_text()
    assert "user" not in status and status.count("Installed-Time: %d" % EPOCH) == len(BASE) + 3

    # opkg checks dependents in the order given: the LuCI app first, as on a router
    pkgdb.opkg_remove(str(root), ["luci-app-passthrough", "passthrough", "python3-netfilterqueue"], tools)
    left = pkgdb.opkg_list_installed(str(root), tools)
    assert sorted(left) == sorted(BASE)
    assert files_below(root, skip=("usr/lib/opkg/", "var/lock/")) == \
        {p for p in before if not p.startswith("usr/lib/opkg/")}
    assert not os.path.lexists(root / "etc/rc.d/S95passthrough")


def test_apk_adds_the_apks_with_dependencies_resolved_and_deletes_them(tools, pkgs, tmp_path, trap):
    root = tmp_path / "root"
    root.mkdir()
    assert pkgdb.declare_base_apk(str(root), base(), tools, epoch=EPOCH) == BASE
    world = (root / "etc/apk/world").read_text().split()
    assert world == sorted(BASE)  # by name, as an image's world has them
    assert (root / "etc/apk/arch").read_text() == "x86_64\n"
    assert pkgdb.apk_info(str(root), ["-e", "libbpf"], tools).split() == ["libbpf"]
    pkgdb.apk_add(str(root), [pkgs[f] for f in APKS], tools)  # no --force, no --nodeps
    listed = pkgdb.apk_info(str(root), ["-v"], tools).split()
    for n, v in (("passthrough", "0.1.0-r1"), ("luci-app-passthrough", "0.1.0-r1"),
                 ("python3-netfilterqueue", "1.1.0-r1"), ("libbpf", "1.0-r1")):
        assert "%s-%s" % (n, v) in listed, listed
    for rel in ("usr/bin/passthrough", "etc/config/passthrough", "usr/lib/passthrough/offload.o",
                "www/luci-static/resources/view/passthrough.js", SITE + "/netfilterqueue/__init__.py"):
        assert (root / rel).is_file(), rel
    assert os.stat(root / "etc/config/passthrough").st_mode & 0o777 == 0o600
    assert os.stat(root / "usr/bin/passthrough").st_mode & 0o777 == 0o755
    assert os.readlink(root / "etc/rc.d/S95passthrough") == "../init.d/passthrough"  # post-install, offline
    lst = (root / "lib/apk/packages/passthrough.list").read_text().split()
    assert "/usr/bin/passthrough" in lst and "/etc/config/passthrough" in lst and lst == sorted(lst)
    static = (root / "lib/apk/packages/passthrough.conffiles_static").read_text().split()
    assert static[0] == "/etc/config/passthrough" and len(static[1]) == 64
    # apk's own check of the installed files against its database
    r = run([tools.apk, "--root", str(root), "--no-network", "--repositories-file", "/dev/null", "audit",
             "--system"], env=tools.env())
    assert r.returncode == 0, r.stdout + r.stderr

    pkgdb.apk_del(str(root), NAMES, tools)
    assert sorted(pkgdb.apk_info(str(root), [], tools).split()) == sorted(BASE)
    assert files_below(root, skip=("lib/apk/db/", "etc/apk/", "var/")) == set()
    assert not os.path.lexists(root / "etc/rc.d/S95passthrough")


@pytest.mark.parametrize("tool", ["opkg", "apk"])
def test_a_missing_base_package_fails_with_a_clear_dependency_error(tools, pkgs, tmp_path, tool, trap):
    root = tmp_path / "root"
    root.mkdir()
    if tool == "opkg":
        pkgdb.declare_base_opkg(str(root), base(without=("libbpf",)))
        with pytest.raises(pkgdb.PkgDbError) as e:
            pkgdb.opkg_install(str(root), [pkgs[IPKS[0]], pkgs[IPKS[2]]], tools)
        assert "cannot find dependency libbpf for passthrough" in str(e.value)
        assert "passthrough" not in pkgdb.opkg_list_installed(str(root), tools)
    else:
        pkgdb.declare_base_apk(str(root), base(without=("libbpf",)), tools)
        with pytest.raises(pkgdb.PkgDbError) as e:
            pkgdb.apk_add(str(root), [pkgs[f] for f in APKS], tools)
        assert "libbpf (no such package)" in str(e.value) and "required by: passthrough-0.1.0-r1" in str(e.value)
        assert "passthrough" not in pkgdb.apk_info(str(root), [], tools).split()
    assert not (root / "usr/bin/passthrough").exists()


def test_pkgdb_refuses_bad_input_and_host_paths(tools, pkgs, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(pkgdb.PkgDbError, match=r"apk refuses the version\(s\) 'image'"):
        pkgdb.declare_base_apk(str(root), [("libbpf", "image", "x86_64")], tools)
    assert not (root / "lib/apk/db/installed").exists()
    with pytest.raises(pkgdb.PkgDbError, match="package name 'Bad Name'"):
        pkgdb.declare_base_opkg(str(root), [("Bad Name", "1", "x86_64")])
    with pytest.raises(pkgdb.PkgDbError, match="expected .name, version, arch."):
        pkgdb.declare_base_opkg(str(root), [("libbpf", "1")])
    with pytest.raises(pkgdb.PkgDbError, match="declared twice"):
        pkgdb.declare_base_opkg(str(root), [("a", "1", "all"), ("a", "2", "all")])
    with pytest.raises(pkgdb.PkgDbError, match="image root is /"):
        pkgdb.declare_base_opkg("/", base())
    with pytest.raises(pkgdb.PkgDbError, match="not a directory"):
        pkgdb.opkg_install(str(tmp_path / "nowhere"), [pkgs[IPKS[0]]], tools)
    with pytest.raises(pkgdb.PkgDbError, match="no such package file"):
        pkgdb.apk_add(str(root), [str(tmp_path / "missing.apk")], tools)
    with pytest.raises(pkgdb.PkgDbError, match="declare_base_apk first"):
        pkgdb.apk_add(str(root), [pkgs[APKS[1]]], tools)
    # an image whose /var points at an absolute path would put opkg's lock file on the host
    evil = tmp_path / "evil"
    evil.mkdir()
    os.symlink(str(tmp_path / "host-var"), str(evil / "var"))
    with pytest.raises(pkgdb.PkgDbError, match="outside the image root"):
        pkgdb.opkg_install(str(evil), [pkgs[IPKS[1]]], tools)
    assert not (tmp_path / "host-var").exists()
    # declaring over a package opkg installed with files is refused
    pkgdb.declare_base_opkg(str(root), base())
    pkgdb.opkg_install(str(root), [pkgs[f] for f in IPKS], tools)
    with pytest.raises(pkgdb.PkgDbError, match="passthrough is installed from a package"):
        pkgdb.declare_base_opkg(str(root), [("passthrough", "9", "x86_64")])


def test_declaring_again_replaces_only_the_declared(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    pkgdb.declare_base_opkg(str(root), [("a", "1", "all"), ("b", "1", "x86_64", ["b-alias"])], epoch=1)
    pkgdb.declare_base_opkg(str(root), [("b", "2", "x86_64")], epoch=2)
    status = (root / "usr/lib/opkg/status").read_text()
    assert status.count("Package: ") == 2 and "Package: a\nVersion: 1\n" in status
    assert "Package: b\nVersion: 2\nStatus: install ok installed\nArchitecture: x86_64\nInstalled-Time: 2\n" in status
    assert (root / "usr/lib/opkg/info/b.list").read_text() == ""
    assert "Version: 2" in (root / "usr/lib/opkg/info/b.control").read_text()


def test_runtime_config_files_for_the_guest(tools, tmp_path):
    root = tmp_path / "root"
    (root / "var/lock").mkdir(parents=True)
    conf = pkgdb.write_opkg_conf(str(root), tools=tools)
    text = open(conf).read()
    assert "dest root /\n" in text and "lists_dir ext /var/opkg-lists\n" in text  # OpenWrt's opkg.conf
    assert text.endswith("arch all 1\narch noarch 1\narch x86_64 10\n")
    assert pkgdb.write_opkg_conf(str(root), tools=tools) and open(conf).read() == text  # idempotent
    # the real opkg reads it as the guest's opkg would
    out = pkgdb.run_opkg(str(root), ["print-architecture"], tools, conf=conf)
    assert out.split("\n") == ["arch all 1", "arch noarch 1", "arch x86_64 10"]
    etc = pkgdb.write_apk_conf(str(root))
    assert open(os.path.join(etc, "arch")).read() == "x86_64\n"
    assert not [ln for ln in open(os.path.join(etc, "repositories.d/distfeeds.list")) if not ln.startswith("#")]
    r = run([tools.apk, "--root", str(root), "--print-arch"], env=tools.env())
    assert r.stdout.strip() == "x86_64"
