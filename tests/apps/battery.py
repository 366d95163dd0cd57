"""A battery of small WSGI apps for ferrocorn's tests (`battery:app`, routed by PATH_INFO).

Every app except the deliberately broken ones (/broken/...) runs inside
`wsgiref.validate.validator`, with warnings turned into errors, so any PEP 3333 violation by the
server (or the app) fails the request with a 500 and a traceback in the log.
"""

import gc
import hashlib
import io
import json
import os
import sys
import threading
import time
import warnings
from urllib.parse import parse_qs
from wsgiref.validate import validator

warnings.simplefilter("error")

# The process that imported this module: the master with --preload, else the worker.
IMPORT_PID = os.getpid()

# How many response iterables this process has closed (PEP 3333: close() is always called).
CLOSED = {"count": 0}


def query(environ):
    return {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}


def text(start_response, body, status="200 OK", ctype="text/plain"):
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


class Closing:
    """An iterable that counts its close() calls."""

    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        CLOSED["count"] += 1


def hello(environ, start_response):
    return text(start_response, b"Hello, World!\n")


def stream(environ, start_response):
    """A generator without Content-Length: sent chunked (HTTP/1.1) or until close (HTTP/1.0)."""
    n = int(query(environ).get("n", "5"))
    delay = float(query(environ).get("delay", "0"))
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        try:
            for i in range(n):
                if delay:
                    time.sleep(delay)
                yield b"chunk %d\n" % i
        finally:
            CLOSED["count"] += 1

    return gen()


def lazy(environ, start_response):
    """start_response called from inside the generator, before its first item (PEP 3333 allows it)."""

    def gen():
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b""
        yield b"started lazily\n"

    return gen()


def write_callable(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written 1\n")
    write(b"written 2\n")
    return [b"returned\n"]


def empty(environ, start_response):
    kind = query(environ).get("kind", "list")
    if kind == "204":
        start_response("204 No Content", [])
        return []
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return [] if kind == "list" else [b"", b""]


def head(environ, start_response):
    body = b"a body that HEAD must not send\n"
    return text(start_response, body)


def environ_json(environ, start_response):
    """The environ's native-string keys, as JSON (latin-1 strings pass through unchanged)."""
    keys = {k: v for k, v in environ.items() if isinstance(v, str)}
    keys["wsgi.version"] = list(environ["wsgi.version"])
    for flag in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.input_terminated"):
        keys[flag] = environ.get(flag)
    keys["pid"] = os.getpid()
    keys["os.environ SERVER_SOFTWARE"] = os.environ.get("SERVER_SOFTWARE")
    body = json.dumps(keys, sort_keys=True).encode()
    return text(start_response, body, ctype="application/json")


def file(environ, start_response):
    """wsgi.file_wrapper over a real file (sendfile) or, with ?mem=1, over BytesIO (iteration)."""
    q = query(environ)
    if q.get("mem"):
        f = io.BytesIO(b"in-memory file\n" * int(q.get("repeat", "1")))
        size = len(f.getvalue())
    else:
        f = open(q["path"], "rb")
        size = os.fstat(f.fileno()).st_size
    offset = int(q.get("offset", "0"))
    f.seek(offset)
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("length"):
        # A declared length shorter than the file: only that many bytes may be sent.
        headers.append(("Content-Length", q["length"]))
    elif not q.get("nolength"):
        headers.append(("Content-Length", str(size - offset)))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f, 65536)


def upload(environ, start_response):
    """Hash the body while streaming it: read(64 KiB) until EOF, never holding it all."""
    h = hashlib.sha256()
    total = 0
    stream = environ["wsgi.input"]
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        total += len(chunk)
        h.update(chunk)
    return text(start_response, b"%d %s\n" % (total, h.hexdigest().encode()))


def echo(environ, start_response):
    """Stream the body back as it arrives: one 64 KiB block in, one block out."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH") or "0"
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", length)])

    def blocks():
        while True:
            chunk = stream.read(65536)
            if not chunk:
                return
            yield chunk

    return blocks()


def lines(environ, start_response):
    """Body lines via readline(), readlines() or iteration, reported as JSON."""
    how = query(environ).get("how", "iter")
    stream = environ["wsgi.input"]
    if how == "readline":
        out = []
        while True:
            line = stream.readline()
            if not line:
                break
            out.append(line)
    elif how == "readlines":
        out = stream.readlines()
    else:
        out = list(stream)
    body = json.dumps([line.decode("latin-1") for line in out]).encode()
    return text(start_response, body, ctype="application/json")


def exc_info_early(environ, start_response):
    """An error before any body byte: start_response again with exc_info replaces the status."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("something broke before the body")
    except ValueError:
        body = b"recovered from ValueError\n"
        start_response(
            "500 Internal Server Error",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
            sys.exc_info(),
        )
        return [body]


def exc_info_late(environ, start_response):
    """An error after the head went out: start_response(exc_info) must re-raise it."""
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"partial body\n"
        try:
            raise ValueError("something broke mid-body")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        yield b"never sent\n"

    return gen()


def read(environ, start_response):
    """The body through one call: read() / read(None) / read(-1) / read(N) / readlines(hint)."""
    how = query(environ).get("how", "all")
    stream = environ["wsgi.input"]
    if how == "none":
        body = stream.read(None)
    elif how == "neg":
        body = stream.read(-1)
    elif how.isdigit():
        body = stream.read(int(how))
    elif how.startswith("hint"):
        body = b"|".join(stream.readlines(int(how[4:])))
    else:
        body = stream.read()
    # Whatever is left is still readable, and then the stream is at its end.
    rest = stream.read()
    return text(start_response, body + b"#" + rest + b"#" + stream.read(1))


def iter_error(environ, start_response):
    """The response iterable raises after the head went out; close() must still be called."""
    start_response("200 OK", [("Content-Type", "text/plain")])

    def gen():
        yield b"before the error\n"
        raise RuntimeError("battery iterable raised mid-body")

    return Closing(gen())


def errors(environ, start_response):
    """Writes to wsgi.errors: the lines must reach the server's error log."""
    stream = environ["wsgi.errors"]
    stream.write("battery wsgi.errors write\n")
    stream.writelines(["battery wsgi.errors line 1\n", "battery wsgi.errors line 2\n"])
    stream.flush()
    return text(start_response, b"logged\n")


def error(environ, start_response):
    raise RuntimeError("battery /error always raises")


def closed(environ, start_response):
    return text(start_response, b"%d\n" % CLOSED["count"])


def closing(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return Closing([b"closed"])


class ClosingList(list):
    """A list with a close(): a subclass, which the server must close like any iterable."""

    def close(self):
        CLOSED["count"] += 1


def closing_list(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return ClosingList([b"closed"])


def pid(environ, start_response):
    """Answers "WORKER_PID IMPORT_PID"; ?sleep=S holds the worker first (to spread requests over workers)."""
    time.sleep(float(query(environ).get("sleep", "0")))
    return text(start_response, b"%d %d\n" % (os.getpid(), IMPORT_PID))


def overlong(environ, start_response):
    """Declares 5 bytes but returns 10: only the declared 5 may be sent."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"01234", b"56789"]


def gc_frozen(environ, start_response):
    """Objects moved to the permanent generation by gc.freeze() (done before fork with --preload)."""
    return text(start_response, b"%d\n" % gc.get_freeze_count())


def thread(environ, start_response):
    """Start and join a Python thread: needs the GIL free and threading sane after fork."""
    out = []
    t = threading.Thread(target=lambda: out.append(sum(range(1000))))
    t.start()
    t.join(timeout=10)
    return text(start_response, b"thread result %d\n" % out[0])


# Deliberately broken responses: not validated (the validator would object first); the server
# must answer 500 and log them as the app's fault.
def broken_status(environ, start_response):
    start_response("OK", [("Content-Type", "text/plain")])
    return [b"x"]


def broken_header(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Snow", "\u2603")])
    return [b"x"]


def broken_no_start(environ, start_response):
    return [b"no start_response"]


def broken_two_lengths(environ, start_response):
    start_response("200 OK", [("Content-Length", "5"), ("Content-Length", "7")])
    return [b"hello"]


def broken_never_started(environ, start_response):
    return []


def status_only(environ, start_response):
    """PEP 3333 wants "200 OK", but a bare code ("204", "404") is what some apps send."""
    start_response(query(environ)["s"], [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return []


def broken_str_body(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["a str, not bytes"]


ROUTES = {
    "/": hello,
    "/stream": stream,
    "/write": write_callable,
    "/lazy": lazy,
    "/empty": empty,
    "/head": head,
    "/environ": environ_json,
    "/file": file,
    "/upload": upload,
    "/echo": echo,
    "/lines": lines,
    "/exc_info/early": exc_info_early,
    "/exc_info/late": exc_info_late,
    "/error": error,
    "/iter_error": iter_error,
    "/errors": errors,
    "/closed": closed,
    "/closing": closing,
    "/pid": pid,
    "/thread": thread,
    "/gc_frozen": gc_frozen,
    "/overlong": overlong,
}
ROUTES = {path: validator(func) for path, func in ROUTES.items()}
ROUTES.update(
    {
        "/broken/status": broken_status,
        "/broken/header": broken_header,
        "/broken/no_start": broken_no_start,
        "/broken/str_body": broken_str_body,
        "/broken/never_started": broken_never_started,
        "/broken/two_lengths": broken_two_lengths,
        "/status_only": status_only,
        # read() and read(-1) without the size PEP 3333 asks for (the validator refuses those
        # calls, but apps make them and servers must answer them).
        "/read": read,
        # The validator wraps the response iterable, hiding the file wrapper from the server:
        # this route returns the wrapper itself so the server can use sendfile(2).
        "/sendfile": file,
        # Unwrapped, so the server sees the list subclass itself.
        "/closing_list": closing_list,
    }
)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    # /environ/ANYTHING shows the environ too (to see how odd paths arrive in PATH_INFO).
    route = ROUTES.get("/environ" if path.startswith("/environ/") else path)
    if route is None:
        return text(start_response, b"no such route\n", status="404 Not Found")
    return route(environ, start_response)


application = app


def factory(greeting="Hello", times=1, **extra):
    """`battery:factory('Hi', times=2)`: an app made by a factory with literal arguments."""
    body = (" ".join([greeting] * times) + "\n").encode()
    suffix = "".join(f" {k}={v}" for k, v in sorted(extra.items())).encode()

    def made(environ, start_response):
        return text(start_response, body.rstrip(b"\n") + suffix + b"\n")

    return made


class Namespace:
    """For dotted attribute paths: `battery:ns.inner.app`."""

    class inner:
        app = staticmethod(hello)


ns = Namespace
not_callable = {"this": "is a dict"}
