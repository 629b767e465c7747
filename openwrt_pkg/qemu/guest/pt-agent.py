#!/usr/bin/python3
"""Guest agent of the passthrough QEMU test image (stdlib only): JSON lines over the virtio-serial
port named "pt.agent" (a procd service of the image, /etc/init.d/pt-agent, respawned by procd).

Request  {"id": N, "cmd": "shell text", "timeout": 30, "input": "stdin text" | null}
         {"id": N, "cmd": "...", "bg": true, "log": "/tmp/x.log"}   start detached, reply at once
         {"id": N, "op": "ping"}                                       liveness + boot info
         {"id": N, "op": "poweroff"}
Reply    {"id": N, "rc": int, "stdout": str, "stderr": str, "ms": float} (bg: "pid"; timeout: rc -9
         and "timeout": true). Commands run in /bin/sh (busybox ash) in their own session, one thread each.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

PORT_NAME = "pt.agent"
with open("/proc/uptime") as _f:
    STARTED_AT = float(_f.read().split()[0])  # procd starts the agent last (START=99): boot time


def find_port(wait=30.0):
    deadline = time.time() + wait
    while True:
        base = "/sys/class/virtio-ports"
        if os.path.isdir(base):
            for d in sorted(os.listdir(base)):
                try:
                    with open(os.path.join(base, d, "name")) as f:
                        if f.read().strip() == PORT_NAME:
                            return "/dev/" + d
                except OSError:
                    pass
        if time.time() > deadline:
            raise SystemExit("pt-agent: no virtio port named %s" % PORT_NAME)
        time.sleep(0.1)


class Agent:
    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR)
        self.wlock = threading.Lock()

    def send(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        with self.wlock:
            while data:
                try:
                    n = os.write(self.fd, data)
                except (BrokenPipeError, InterruptedError):
                    return  # host not connected: the reply is lost, the host retries
                except BlockingIOError:
                    time.sleep(0.01)
                    continue
                data = data[n:]

    def handle(self, req):
        rid = req.get("id")
        t0 = time.time()
        op = req.get("op")
        if op == "ping":
            with open("/proc/uptime") as f:
                up = float(f.read().split()[0])
            self.send({"id": rid, "rc": 0, "boot": STARTED_AT, "uptime": up, "pid": os.getpid()})
            return
        if op == "poweroff":
            self.send({"id": rid, "rc": 0})
            subprocess.Popen(["/bin/busybox", "poweroff"])
            return
        cmd = req.get("cmd", "")
        if req.get("bg"):
            out = open(req.get("log") or "/dev/null", "ab")
            p = subprocess.Popen(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 start_new_session=True)
            out.close()
            self.send({"id": rid, "rc": 0, "pid": p.pid, "ms": round((time.time() - t0) * 1000, 2)})
            threading.Thread(target=p.wait, daemon=True).start()
            return
        timeout = req.get("timeout", 60)
        data = req.get("input")
        p = subprocess.Popen(["/bin/sh", "-c", cmd], stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        timed_out = False
        try:
            out, err = p.communicate(data.encode() if data is not None else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            out, err = p.communicate()
        reply = {"id": rid, "rc": -9 if timed_out else p.returncode, "stdout": out.decode(errors="replace"),
                 "stderr": err.decode(errors="replace"), "ms": round((time.time() - t0) * 1000, 2)}
        if timed_out:
            reply["timeout"] = True
        self.send(reply)

    def safe_handle(self, req):
        try:
            self.handle(req)
        except Exception as e:  # never let one request kill the agent
            self.send({"id": req.get("id"), "rc": -1, "stdout": "", "stderr": "pt-agent: %r" % (e,)})

    def serve(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except InterruptedError:
                continue
            if not chunk:
                time.sleep(0.05)  # host side not connected
                continue
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                try:
                    req = json.loads(line.decode())
                except ValueError:
                    self.send({"id": None, "rc": -1, "stderr": "pt-agent: bad json"})
                    continue
                threading.Thread(target=self.safe_handle, args=(req,), daemon=True).start()


def main():
    Agent(find_port()).serve()


if __name__ == "__main__":
    sys.exit(main())
