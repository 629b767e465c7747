"""Flow tables: IKE SAs by initiator SPI, ESP SAs by SPI, L2TP tunnels by tunnel id.

Pure and MicroPython-compatible. Bounded in size (global and per LAN host) so a flood can never
grow memory; entries expire after `timeout` seconds without activity. A flow is keyed by
(kind, remote_ip, key): the key is what the kernel demuxes inbound packets on.
"""

KINDS = ("ike", "esp", "natt", "l2tp")
# Which passthrough toggle governs a flow kind.
FAMILY = {"ike": "ipsec", "esp": "ipsec", "natt": "ipsec", "l2tp": "l2tp"}


class Flow:
    __slots__ = ("kind", "lan_ip", "lan_port", "wan_port", "remote_ip", "remote_port", "key", "key_out",
                 "zone", "created", "last_seen", "packets", "kernel_packets", "state", "expires", "detail")

    def __init__(self, kind, lan_ip, remote_ip, key, now, zone=None):
        self.kind = kind
        self.lan_ip = lan_ip
        self.remote_ip = remote_ip
        self.key = key
        self.key_out = None
        self.lan_port = None
        self.wan_port = None
        self.remote_port = None
        self.zone = zone
        self.created = now
        self.last_seen = now
        self.packets = 0
        self.kernel_packets = 0
        self.state = "up"
        self.expires = None  # absolute deadline overriding the idle timeout (closing tunnels)
        self.detail = None

    def touch(self, now):
        self.last_seen = now
        self.packets += 1

    def key_text(self):
        if self.key is None:
            return None
        if self.kind == "ike":
            return "%016x" % self.key
        if self.kind in ("esp", "natt"):
            return "%08x" % self.key
        return str(self.key)

    def as_dict(self, now):
        d = {
            "kind": self.kind, "lan_ip": self.lan_ip, "lan_port": self.lan_port, "wan_port": self.wan_port,
            "remote_ip": self.remote_ip, "remote_port": self.remote_port, "key": self.key_text(),
            "age": round(now - self.created, 1), "idle": round(now - self.last_seen, 1),
            "packets": self.packets + self.kernel_packets, "state": self.state, "zone": self.zone,
        }
        if self.key_out is not None:
            d["key_out"] = ("%08x" % self.key_out) if self.kind in ("esp", "natt") else (
                "%016x" % self.key_out if self.kind == "ike" else str(self.key_out))
        return d


class TableFull(Exception):
    pass


class FlowTable:
    """All tracked flows. `add` refuses (TableFull) past max_flows or flows_per_host."""

    def __init__(self, max_flows=4096, flows_per_host=256, timeout=600):
        self.max_flows = max_flows
        self.flows_per_host = flows_per_host
        self.timeout = timeout
        self.flows = {}      # (kind, remote_ip, key) -> Flow
        self.per_host = {}   # lan_ip -> count

    def __len__(self):
        return len(self.flows)

    def get(self, kind, remote_ip, key):
        return self.flows.get((kind, remote_ip, key))

    def add(self, flow):
        """Track a flow. Expiry is the caller's (the engine must delete expired flows' kernel
        elements too), so a full table refuses here rather than expiring behind its back."""
        k = (flow.kind, flow.remote_ip, flow.key)
        old = self.flows.get(k)
        if old is not None:
            self._forget(k, old)
        if len(self.flows) >= self.max_flows:
            raise TableFull("flow table full (%d flows)" % self.max_flows)
        if self.per_host.get(flow.lan_ip, 0) >= self.flows_per_host:
            raise TableFull("host %s has %d flows (flows_per_host)" % (flow.lan_ip, self.flows_per_host))
        self.flows[k] = flow
        self.per_host[flow.lan_ip] = self.per_host.get(flow.lan_ip, 0) + 1
        return flow

    def remove(self, flow):
        k = (flow.kind, flow.remote_ip, flow.key)
        if self.flows.get(k) is flow:
            self._forget(k, flow)
            return True
        return False

    def _forget(self, k, flow):
        del self.flows[k]
        n = self.per_host.get(flow.lan_ip, 0) - 1
        if n > 0:
            self.per_host[flow.lan_ip] = n
        else:
            self.per_host.pop(flow.lan_ip, None)

    def expire(self, now):
        """Drop flows idle longer than the timeout (or past their own deadline); return them."""
        dead = []
        for k in list(self.flows):
            f = self.flows[k]
            if (f.expires is not None and now >= f.expires) or now - f.last_seen > self.timeout:
                dead.append(f)
        for f in dead:
            self.remove(f)
        return dead

    def hosts(self):
        return list(self.per_host)
