"""An app whose import starts a Python thread that logs a tick every 50 ms to stderr.

The ticks keep coming while the worker waits for connections only if the worker does not hold
the GIL between requests.
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
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]
