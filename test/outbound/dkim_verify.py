"""Independent DKIM check for the outbound tests with dkimpy (Debian python3-dkim).

Usage: dkim_verify.py MESSAGE_FILE NAME=TXT [NAME=TXT ...]
Verifies every DKIM-Signature of the message against the given TXT records (no real DNS) and
prints one JSON line: {"results": [true, ...], "domains": [...], "algorithms": [...]}.
"""
import json
import sys

import dkim

records = {}
for arg in sys.argv[2:]:
    name, txt = arg.split("=", 1)
    records[name.lower().rstrip(".")] = txt.encode()


def dnsfunc(name, timeout=5):
    if isinstance(name, bytes):
        name = name.decode()
    return records.get(name.lower().rstrip("."))


with open(sys.argv[1], "rb") as f:
    message = f.read()

d = dkim.DKIM(message)
sigs = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
results, domains, algorithms = [], [], []
for i, sig in enumerate(sigs):
    tags = dict(t.strip().split(b"=", 1) for t in sig.split(b";") if b"=" in t)
    domains.append(tags.get(b"d", b"").decode().strip())
    algorithms.append(tags.get(b"a", b"").decode().strip())
    results.append(bool(d.verify(idx=i, dnsfunc=dnsfunc)))
print(json.dumps({"results": results, "domains": domains, "algorithms": algorithms}))
