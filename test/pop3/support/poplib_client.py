"""Drives Python's poplib against the server under test and prints what it saw as JSON.

Usage: poplib_client.py '<json>' where json has host, port, mode ("plain" | "stls" | "ssl"),
user, password, auth ("user" | "plain" | "apop"), dele (message numbers to delete before QUIT)
and top (optional [msg, lines]).
"""
import base64
import hashlib
import json
import poplib
import ssl
import sys

args = json.loads(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

out = {}
if args["mode"] == "ssl":
    p = poplib.POP3_SSL(args["host"], args["port"], context=ctx, timeout=20)
else:
    p = poplib.POP3(args["host"], args["port"], timeout=20)
out["welcome"] = p.getwelcome().decode()
caps = p.capa()
out["capa"] = sorted(caps.keys())
if args["mode"] == "stls":
    out["stls"] = p.stls(context=ctx).decode()
    out["capa_after_tls"] = sorted(p.capa().keys())

try:
    if args.get("auth") == "plain":
        # RFC 5034 AUTH PLAIN with an initial response, sent by hand (poplib has no SASL helper).
        ir = base64.b64encode(("\0%s\0%s" % (args["user"], args["password"])).encode()).decode()
        out["login"] = p._shortcmd("AUTH PLAIN " + ir).decode()
    else:
        p.user(args["user"])
        out["login"] = p.pass_(args["password"]).decode()
except poplib.error_proto as e:
    out["login_error"] = e.args[0].decode() if isinstance(e.args[0], bytes) else str(e.args[0])
    p.quit()
    print(json.dumps(out))
    sys.exit(0)

out["stat"] = list(p.stat())
resp, listing, _ = p.list()
out["list"] = [l.decode() for l in listing]
resp, uidl, _ = p.uidl()
out["uidl"] = [l.decode() for l in uidl]
bodies = []
for line in out["list"]:
    n = int(line.split()[0])
    resp, lines, octets = p.retr(n)
    raw = b"\r\n".join(lines) + b"\r\n"
    bodies.append({"n": n, "sha256": hashlib.sha256(raw).hexdigest(), "octets": octets, "len": len(raw)})
out["retr"] = bodies
if args.get("top"):
    resp, lines, _ = p.top(*args["top"])
    out["top"] = [l.decode() for l in lines]
for n in args.get("dele", []):
    out.setdefault("dele", []).append(p.dele(n).decode())
out["quit"] = p.quit().decode()
print(json.dumps(out))
