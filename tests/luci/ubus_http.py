"""uhttpd's /ubus JSON-RPC from the host, called the way LuCI's JS calls it; shared by the host
LuCI harness (luci_harness.py) and the QEMU router's LuCI test."""
import json
import urllib.error
import urllib.request

ANON = "0" * 32  # the session id of a caller that has not logged in


def http(base_url, path, data=None, headers=None, timeout=10):
    """(HTTP status, body text) of one request; proxies from the environment are ignored."""
    req = urllib.request.Request(base_url.rstrip("/") + path, data=data, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def jsonrpc(base_url, sid, obj, method, args=None, timeout=30):
    """One ubus call over /ubus: (ubus status, result or None); a JSON-RPC level refusal (e.g.
    -32002 access denied by uhttpd-mod-ubus) comes back as (its error object, None)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "call",
                       "params": [sid, obj, method, args or {}]}).encode()
    code, text = http(base_url, "/ubus", body, {"Content-Type": "application/json"}, timeout=timeout)
    try:
        reply = json.loads(text)
    except ValueError:
        raise ValueError("/ubus answered %s with non-JSON: %r" % (code, text[:300]))
    if "error" in reply:
        return reply["error"], None
    res = reply.get("result") or []
    return res[0], (res[1] if len(res) > 1 else None)
