"""A WSGI app for the event-loop worker's tests (`threads_app:app`, routed by PATH_INFO): it
counts the requests in the app at once, so a test can see app threads overlap.

Routes:
  GET  /                   200 "Hello, World!\n"
  GET  /pid                the worker's pid
  GET  /overlap?until=N    sleeps 100 ms, and again while fewer than N requests were ever in the
                           app at once (at most 50 times); answers "MAX PID", MAX the most seen
  POST /sha256?until=N     reads the body in 16 KiB pieces, waits like /overlap, answers
                           "LENGTH SHA256HEX MAX"
  GET  /multithread        wsgi.multithread and wsgi.multiprocess, as "True False" say
  GET  /big?bytes=N        N bytes of a repeating pattern, with Content-Length
  GET  /slowish?ms=N       says "slowish N ms in PID" on wsgi.errors, sleeps N ms, answers the pid
  GET  /spin               a Python busy loop for 60 s (says "spinning" on wsgi.errors first)
  GET  /sleep              time.sleep(60) (says "sleeping" on wsgi.errors first)
"""

import hashlib
import os
import threading
import time
from urllib.parse import parse_qs

_lock = threading.Lock()
_in_app = {"now": 0, "max": 0}


def _query(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _text(start_response, body, status="200 OK"):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _enter():
    with _lock:
        _in_app["now"] += 1
        _in_app["max"] = max(_in_app["max"], _in_app["now"])


def _leave():
    with _lock:
        _in_app["now"] -= 1


def _wait_for_overlap(until):
    """Sleep 100 ms, then on while fewer than `until` requests were ever in the app at once:
    a server that runs them one at a time answers each after 5 s, with a max of 1."""
    for _ in range(50):
        time.sleep(0.1)
        with _lock:
            if _in_app["max"] >= until:
                break
    with _lock:
        return _in_app["max"]


def overlap(environ, start_response):
    until = int(_query(environ).get("until", "1"))
    _enter()
    try:
        seen = _wait_for_overlap(until)
    finally:
        _leave()
    return _text(start_response, b"%d %d\n" % (seen, os.getpid()))


def sha256(environ, start_response):
    until = int(_query(environ).get("until", "1"))
    _enter()
    try:
        h = hashlib.sha256()
        total = 0
        stream = environ["wsgi.input"]
        while True:
            chunk = stream.read(16384)
            if not chunk:
                break
            total += len(chunk)
            h.update(chunk)
            # Let the other threads run between pieces: their reads interleave with this one.
            time.sleep(0)
        seen = _wait_for_overlap(until)
    finally:
        _leave()
    return _text(start_response, b"%d %s %d\n" % (total, h.hexdigest().encode(), seen))


def multithread(environ, start_response):
    flags = (environ["wsgi.multithread"], environ["wsgi.multiprocess"])
    return _text(start_response, ("%s %s\n" % flags).encode())


def big(environ, start_response):
    n = int(_query(environ)["bytes"])
    pattern = bytes(range(256))
    body = (pattern * (n // 256 + 1))[:n]
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
    # In 1 MiB pieces, as apps stream big bodies.
    return [body[i : i + (1 << 20)] for i in range(0, n, 1 << 20)]


def slowish(environ, start_response):
    ms = int(_query(environ)["ms"])
    # A readiness signal for tests: the request is inside the app now.
    environ["wsgi.errors"].write("slowish %d ms in %d\n" % (ms, os.getpid()))
    environ["wsgi.errors"].flush()
    time.sleep(ms / 1000)
    return _text(start_response, b"%d\n" % os.getpid())


def spin(environ, start_response):
    environ["wsgi.errors"].write("spinning\n")
    environ["wsgi.errors"].flush()
    end = time.monotonic() + 60
    while time.monotonic() < end:  # STUCK SPINNING
        pass
    return _text(start_response, b"spun\n")


def sleep(environ, start_response):
    environ["wsgi.errors"].write("sleeping\n")
    environ["wsgi.errors"].flush()
    time.sleep(60)  # STUCK SLEEPING
    return _text(start_response, b"slept\n")


def hello(environ, start_response):
    return _text(start_response, b"Hello, World!\n")


def pid(environ, start_response):
    return _text(start_response, b"%d\n" % os.getpid())


ROUTES = {
    "/": hello,
    "/pid": pid,
    "/overlap": overlap,
    "/sha256": sha256,
    "/multithread": multithread,
    "/big": big,
    "/slowish": slowish,
    "/spin": spin,
    "/sleep": sleep,
}


def app(environ, start_response):
    route = ROUTES.get(environ["PATH_INFO"])
    if route is None:
        return _text(start_response, b"no such route\n", status="404 Not Found")
    return route(environ, start_response)
