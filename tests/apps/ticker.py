"""An app whose import starts a Python thread that logs a tick every 50 ms to stderr.

The ticks keep coming while the worker waits for connections, or while a POST waits for its body,
only if the worker does not hold the GIL while it waits on the socket.
"""

import sys
import threading
import time


def _tick():
    n = 0
    while True:
        n += 1
        sys.stderr.write(f"ticker tick {n}\n")
        sys.stderr.flush()
        time.sleep(0.05)


threading.Thread(target=_tick, name="ticker", daemon=True).start()


def app(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        # The ticks must go on while this waits for a slow client's body.
        sys.stderr.write("ticker reading the body\n")
        body = environ["wsgi.input"].read()
        reply = b"read %d\n" % len(body)
    elif environ["QUERY_STRING"].startswith("mb="):
        # A big response: the ticks must go on while the worker waits to write to a slow reader.
        mb = int(environ["QUERY_STRING"][3:])
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(mb << 20))])
        sys.stderr.write("ticker sending megabytes\n")
        return (b"x" * (1 << 20) for _ in range(mb))
    else:
        reply = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(reply)))])
    return [reply]
