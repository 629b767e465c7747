"""The reference consumer: bind the daemon's NFQUEUE and accept everything, nothing else.

Same I/O structure as the daemon (select on the queue fd, run(block=False), max_len 4096), so
the difference to the daemon is exactly its per-packet work (decode, engine, kernel ops).
Runs until --seconds pass (bounded), then prints one JSON line with what it accepted.

    ip netns exec NS python bench/nfq_bare.py --queue 7100 --seconds 10 [--ready FILE]
"""
import argparse
import json
import os
import select
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--queue", type=int, default=7100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--ready")
    a = ap.parse_args(argv)
    from netfilterqueue import NetfilterQueue

    count = [0]

    def cb(pkt):
        count[0] += 1
        pkt.accept()

    q = NetfilterQueue()
    q.bind(a.queue, cb, max_len=4096)
    if a.ready:
        with open(a.ready, "w") as f:
            f.write(str(os.getpid()))
    fd = q.get_fd()
    end = time.monotonic() + a.seconds
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([fd], [], [], min(left, 0.2))
            if r:
                q.run(block=False)
    finally:
        q.unbind()
    print(json.dumps({"accepted": count[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
