"""Runs a list of imaplib calls against a server and prints what each returned, as JSON.

argv[1]: {"host", "port", "mode": "plain"|"starttls"|"ssl", "user", "password", "steps": [[method, *args], ...]}
A step whose method is "login" uses user/password when given no arguments. Bytes come back as
latin-1 text so that any octet survives. An imaplib error ends the run with {"error": ...} last.
"""
import imaplib
import json
import ssl
import sys

def plain(value):
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value

def main():
    args = json.loads(sys.argv[1])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    mode = args.get("mode", "plain")
    if mode == "ssl":
        m = imaplib.IMAP4_SSL(args["host"], args["port"], ssl_context=ctx, timeout=20)
    else:
        m = imaplib.IMAP4(args["host"], args["port"], timeout=20)
        if mode == "starttls":
            m.starttls(ssl_context=ctx)
    out = {"welcome": plain(m.welcome), "capabilities": list(plain(list(m.capabilities))), "results": []}
    try:
        for step in args.get("steps", []):
            method, rest = step[0], step[1:]
            if method == "login" and not rest:
                rest = [args["user"], args["password"]]
            if method == "append_bytes":
                # append(mailbox, flags, date_time, message bytes given as latin-1 text)
                rest = [rest[0], rest[1], rest[2], rest[3].encode("latin-1")]
                method = "append"
            if method == "untagged":
                out["results"].append(plain(m.untagged_responses.get(rest[0], [])))
                continue
            typ, data = getattr(m, method)(*rest)
            out["results"].append([plain(typ), plain(data)])
    except Exception as e:  # noqa: BLE001 - the test reads the error text
        out["error"] = "%s: %s" % (type(e).__name__, e)
    try:
        m.logout()
    except Exception:  # noqa: BLE001
        pass
    print(json.dumps(out))

main()
