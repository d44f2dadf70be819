"""A scripted remote MX for the outbound tests: aiosmtpd (Debian python3-aiosmtpd) on 127.0.0.1.

Usage: remote_mx.py OUTDIR [--data-replies 451,451,250] [--reject ADDR=550 ...] [--tls CERT KEY]
                    [--no-smtputf8] [--broken-tls] [--size-limit BYTES] [--no-ehlo]
Prints `READY <port>` once listening, then one JSON line per event on stdout:
  {"event": "message", "n": 1, "mail_from": ..., "rcpts": [...], "file": ..., "reply": "250 ..."}
Each completed DATA consumes the next entry of --data-replies (the last one repeats).
"""
import argparse
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP

REPLIES = {
    250: "250 2.0.0 OK queued",
    451: "451 4.3.0 Temporary local problem, try again",
    452: "452 4.2.2 Mailbox full",
    550: "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
    554: "554 5.7.1 Message refused",
}


class Handler:
    def __init__(self, outdir, data_replies, rejects):
        self.outdir = outdir
        self.data_replies = data_replies
        self.rejects = rejects
        self.n = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        code = self.rejects.get(address.lower())
        if code:
            reply = REPLIES.get(code, f"{code} rejected").format(rcpt=address)
            emit({"event": "rcpt-rejected", "rcpt": address, "reply": reply})
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        code = self.data_replies[min(self.n - 1, len(self.data_replies) - 1)]
        reply = REPLIES.get(code, f"{code} scripted").format(rcpt=",".join(envelope.rcpt_tos))
        path = os.path.join(self.outdir, f"{self.n}.eml")
        if code == 250:
            with open(path, "wb") as f:
                f.write(envelope.original_content)
        emit({
            "event": "message",
            "n": self.n,
            "mail_from": envelope.mail_from,
            "mail_options": envelope.mail_options,
            "rcpts": envelope.rcpt_tos,
            "rcpt_options": envelope.rcpt_options,
            "file": path if code == 250 else None,
            "reply": reply,
            "tls": session.ssl is not None,
        })
        return reply


class HeloOnly(SMTP):
    """An old server that knows HELO only."""

    async def smtp_EHLO(self, hostname):
        await self.push("502 5.5.1 Command not implemented")


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--data-replies", default="250")
    ap.add_argument("--reject", action="append", default=[])
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--no-smtputf8", action="store_true")
    ap.add_argument("--no-ehlo", action="store_true", help="answer EHLO with 502 (an RFC 821 server)")
    ap.add_argument("--size-limit", type=int, default=33554432)
    ap.add_argument("--broken-tls", action="store_true", help="offer STARTTLS but fail every handshake")
    args = ap.parse_args()
    rejects = {}
    for r in args.reject:
        addr, code = r.rsplit("=", 1)
        rejects[addr.lower()] = int(code)
    handler = Handler(args.outdir, [int(x) for x in args.data_replies.split(",")], rejects)
    tls_context = None
    if args.tls:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.tls[0], args.tls[1])
        if args.broken_tls:
            # Only TLS 1.0, which the client (TLS 1.2 minimum) refuses: every handshake fails.
            tls_context.minimum_version = ssl.TLSVersion.TLSv1
            tls_context.maximum_version = ssl.TLSVersion.TLSv1
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: (HeloOnly if args.no_ehlo else SMTP)(handler, hostname="remote.test", enable_SMTPUTF8=not args.no_smtputf8, decode_data=False,
                     tls_context=tls_context, ident="remote-mx",
                     data_size_limit=args.size_limit),
        host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    # Stop when the test closes our stdin (or kills us).
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


asyncio.run(main())
