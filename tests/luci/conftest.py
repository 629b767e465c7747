"""Fixtures of the host-side LuCI tests: OpenWrt's userspace stage (built once, cached by
userspace.py) and a started LuciRouter per test module."""
import os
import shutil

import pytest

import luci_harness


@pytest.fixture(scope="session")
def luci_manifest():
    return luci_harness.userspace.Userspace().build()


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    """Where screenshots go: the test's tmp dir, and $PT_ARTEFACTS too when it is set."""
    return tmp_path_factory.mktemp("luci-artefacts")


def make_router(tmp_path_factory, manifest, name):
    if os.geteuid() != 0:
        pytest.fail("the LuCI harness needs root (network namespace, chroot)")
    work = tmp_path_factory.mktemp(name)
    r = luci_harness.LuciRouter(str(work), manifest=manifest)
    r.start()
    return r, work


@pytest.fixture(scope="module")
def router(tmp_path_factory, luci_manifest, request):
    r, work = make_router(tmp_path_factory, luci_manifest, request.module.__name__.rsplit(".", 1)[-1])
    try:
        yield r
    finally:
        r.stop()
        shutil.rmtree(os.path.join(str(work), "root"), ignore_errors=True)
