#!/usr/bin/env python3
"""SMTP sink for Ferry's integration tests (started by scripts/test-services).

Accepts every message on HOST:PORT and stores it under DIR so a test can read
what arrived:

  DIR/<stem>.eml   the raw message exactly as received (headers + body, CRLF)
  DIR/<stem>.json  envelope: mail_from, rcpt_tos, helo, peer, auth, size, time

<stem> is "<unix-ns>-<seq>", so sorting file names gives arrival order. Both
files are written under DIR/.tmp and renamed into place, the .json first, so a
test that sees a .eml can rely on it being complete and on its .json existing.

AUTH PLAIN/LOGIN is offered without TLS and any credentials are accepted (the
login/password used are recorded), so clients configured with credentials work
too; clients that do not authenticate are accepted as well.
"""
import argparse
import itertools
import json
import os
import signal
import sys
import threading
import time
import warnings
from datetime import datetime, timezone

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


# aiosmtpd warns about its own deprecated Session.login_data on every AUTH.
warnings.filterwarnings("ignore", message="Session.login_data is deprecated")


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Sink:
    def __init__(self, outdir):
        self.outdir = outdir
        self.tmpdir = os.path.join(outdir, ".tmp")
        os.makedirs(self.tmpdir, exist_ok=True)
        self.seq = itertools.count(1)

    def _put(self, name, data):
        tmp = os.path.join(self.tmpdir, name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.outdir, name))

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or b""
        stem = f"{time.time_ns()}-{next(self.seq):06d}"
        auth = session.auth_data
        meta = {
            "eml": stem + ".eml",
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "helo": session.host_name,
            "peer": list(session.peer) if session.peer else None,
            "auth_login": _text(auth.login) if isinstance(auth, LoginPassword) else None,
            "auth_password": _text(auth.password) if isinstance(auth, LoginPassword) else None,
            "size": len(raw),
            "received_at": datetime.now(timezone.utc).isoformat(),
        }
        self._put(stem + ".json", json.dumps(meta, indent=2).encode() + b"\n")
        self._put(stem + ".eml", raw)
        print(f"stored {stem}.eml from {envelope.mail_from} to {envelope.rcpt_tos}", flush=True)
        return "250 OK: stored " + stem


def accept_any_login(server, session, envelope, mechanism, auth_data):
    # Handing auth_data back makes aiosmtpd keep it in session.auth_data.
    return AuthResult(success=True, auth_data=auth_data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=52525)
    ap.add_argument("--dir", required=True, help="where .eml/.json files are written")
    args = ap.parse_args()

    controller = Controller(
        Sink(args.dir),
        hostname=args.host,
        port=args.port,
        data_size_limit=64 * 1024 * 1024,
        enable_SMTPUTF8=True,
        authenticator=accept_any_login,
        auth_require_tls=False,
    )
    controller.start()  # returns once the server accepts connections
    print(f"smtp sink listening on {args.host}:{args.port}, writing to {args.dir}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
