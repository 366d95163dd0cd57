"""Apps for `ferrocorn sizing`'s end-to-end tests.

- `cpu_app`: pure-Python compute per request (about 10 ms of CPU), so throughput tops out at the
  number of CPUs.
- `io_app`: each request waits 50 ms (as on a database) and uses almost no CPU, so throughput keeps
  rising with the worker count.
- `error_app`: answers 400, as Django's DisallowedHost does.
"""

import time


def _compute():
    total = 0
    for i in range(60_000):
        total += i * i % 7
    return total


def cpu_app(environ, start_response):
    body = b"%d\n" % _compute()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def io_app(environ, start_response):
    time.sleep(0.05)
    body = b"waited\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def error_app(environ, start_response):
    body = b"Invalid HTTP_HOST header: 'localhost'.\n"
    start_response("400 Bad Request", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
