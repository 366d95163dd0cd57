"""The bundled example WSGI app: `ferrocorn --chdir examples hello:app`.

Routes (cli/tests/process.rs relies on them exactly):
  GET  /            200 "Hello, World!\n"
  POST /echo        200, the request body back with the request's Content-Type
  GET  /sleep?s=N   writes "sleeping N.Ns" to wsgi.errors, sleeps N seconds, 200 "slept N.Ns\n"
  GET  /error       raises RuntimeError (the server answers 500 and logs the traceback)
"""

import time
from urllib.parse import parse_qs


def app(environ, start_response):
    method = environ["REQUEST_METHOD"]
    path = environ["PATH_INFO"]

    if path == "/echo" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        content_type = environ.get("CONTENT_TYPE") or "application/octet-stream"
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    if path == "/sleep":
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["1"])[0])
        # A readiness signal for tests: the request is inside the app now.
        environ["wsgi.errors"].write(f"sleeping {seconds:.1f}s\n")
        environ["wsgi.errors"].flush()
        time.sleep(seconds)
        body = f"slept {seconds:.1f}s\n".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    if path == "/error":
        raise RuntimeError("the /error route always raises")

    if path == "/":
        body = b"Hello, World!\n"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"not found\n"]


application = app
