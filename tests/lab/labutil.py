"""Shared set-up of the namespace-lab test modules: one lab per module, cleaned up after."""
import contextlib
import os
import subprocess

from passthrough.lab.harness import LabRun


@contextlib.contextmanager
def running_lab(tag):
    """A LabRun (responders + daemon) with namespaces pt-<tag><pid>-*, removed afterwards."""
    prefix = "pt-%s%d-" % (tag, os.getpid() % 100000)
    run = LabRun(prefix=prefix, workdir="/tmp/passthrough-test-%s" % prefix.rstrip("-"))
    try:
        run.up()
        yield run
    finally:
        run.down()
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in out, "lab namespaces left behind"


def with_options(lab, options):
    """The module's lab with its daemon running on exactly these options."""
    if lab.daemon is None:
        lab.write_config(**options)
        lab.start_daemon()
    reply = lab.set_options(**options)
    assert reply["ok"], reply
    return lab
