"""An SMTP server that keeps every message it is sent, for the tests of the
mails Gatehouse sends (aiosmtpd, a real SMTP implementation, not a mock).

    python3 smtp_sink.py PORT DIR

Listens on 127.0.0.1:PORT: plain SMTP, without TLS or AUTH, on loopback only.
PORT must not be 0: the caller picks it, so that a sink stopped and started
again comes back where the service under test sends to ("relay down, then up").

Each message is kept in DIR as two files, each written to a temporary file
first and renamed: <seq>.json, the envelope ({"mail_from", "rcpt_tos"}), then
<seq>.eml, the data as received (RFC 5322). A reader that sees <seq>.eml sees
the whole message and its envelope. Numbers go on from the highest already in
DIR, so a restarted sink adds to what the last one kept.

A recipient whose local part is `refuse-NNN` (NNN a 5xx code) is refused
with that code at RCPT, as a relay that will not take it (550) or refuses by
policy (554) would answer; every other recipient is accepted.

Prints "ready 127.0.0.1:PORT" once it listens. Exits when its standard input
closes (so it never outlives the process that started it), or on a signal.
"""

import asyncio
import json
import os
import re
import sys
import threading

from aiosmtpd.smtp import SMTP

KEPT = re.compile(r"(\d+)\.eml")
REFUSE = re.compile(r"refuse-(5\d\d)@", re.IGNORECASE)


class Keep:
    """The aiosmtpd handler: writes each message into the directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.seq = max(
            (int(m.group(1)) for m in map(KEPT.fullmatch, os.listdir(directory)) if m),
            default=0,
        )

    def write(self, name: str, data: bytes) -> None:
        temporary = os.path.join(self.directory, f".{name}.tmp")
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, os.path.join(self.directory, name))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        refused = REFUSE.match(address)
        if refused:
            return f"{refused.group(1)} refused by the test sink"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        self.seq += 1
        seq = f"{self.seq:06d}"
        kept = {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos)}
        self.write(f"{seq}.json", json.dumps(kept).encode())
        self.write(f"{seq}.eml", envelope.original_content)
        return f"250 OK: kept as {seq}"


def exit_when_stdin_closes() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


async def serve(port: int, directory: str) -> None:
    handler = Keep(directory)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        # An explicit hostname: aiosmtpd would otherwise look up the FQDN.
        lambda: SMTP(handler, hostname="smtp-sink.test", enable_SMTPUTF8=True),
        host="127.0.0.1",
        port=port,
    )
    print(f"ready 127.0.0.1:{port}", flush=True)
    await server.serve_forever()


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: smtp_sink.py PORT DIR")
    port, directory = int(sys.argv[1]), sys.argv[2]
    if port == 0:
        sys.exit("smtp_sink.py: give a port, not 0: a restarted sink must come back on the same one")
    os.makedirs(directory, exist_ok=True)
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    asyncio.run(serve(port, directory))


if __name__ == "__main__":
    main()
