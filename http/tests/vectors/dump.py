"""Dump gunicorn's request vectors as plain lines for http/tests/vectors.rs.

Usage: python3 dump.py VECTOR_DIR. Loads every NAME.py the way gunicorn's tests/treq.py does
(with `uri` and `cfg` in scope), with tiny stand-ins for the two gunicorn modules they import,
and decodes NAME.http with gunicorn's own escape rules. Every value is hex so no quoting is needed.
"""
import os
import sys
import types
import urllib.parse


class Config:
    def __init__(self):
        self.settings = []

    def set(self, key, value):
        self.settings.append((key, value))


def _errors_getattr(name):
    cls = type(name, (Exception,), {})
    setattr(errors, name, cls)
    return cls


gunicorn = types.ModuleType("gunicorn")
config = types.ModuleType("gunicorn.config")
config.Config = Config
http = types.ModuleType("gunicorn.http")
errors = types.ModuleType("gunicorn.http.errors")
errors.__getattr__ = _errors_getattr
for mod in (gunicorn, config, http, errors):
    sys.modules[mod.__name__] = mod


def split_request_uri(uri):
    # gunicorn.util.split_request_uri: a leading // is a path, not a network location.
    if uri.startswith("//"):
        parts = urllib.parse.urlsplit("." + uri)
        return parts._replace(path=parts.path[1:])
    return urllib.parse.urlsplit(uri)


def uri(data):
    parts = split_request_uri(data)
    return {"raw": data, "path": parts.path or "", "query": parts.query or "",
            "fragment": parts.fragment or ""}


def decode_http(raw):
    data = raw.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\000").replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    out = bytearray()
    i = 0
    while i < len(data):
        if i + 3 < len(data) and data[i:i + 2] == b"\\x":
            try:
                out.append(int(data[i + 2:i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        out.append(data[i])
        i += 1
    if b"\\" in out:
        raise AssertionError("unexpected backslash in test data")
    return bytes(out)


def h(value):
    if isinstance(value, str):
        value = value.encode("latin-1")
    return value.hex() or "-"


def main(root):
    for kind in ("valid", "invalid"):
        folder = os.path.join(root, kind)
        for fname in sorted(os.listdir(folder)):
            if not fname.endswith(".http"):
                continue
            name = fname[:-5]
            with open(os.path.join(folder, fname), "rb") as f:
                data = decode_http(f.read())
            scope = {"uri": uri, "cfg": Config(), "__name__": "__config__"}
            with open(os.path.join(folder, name + ".py")) as f:
                exec(compile(f.read(), name + ".py", "exec"), scope)
            print("VECTOR", kind, name)
            print("DATA", h(data))
            for key, value in scope["cfg"].settings:
                print("CFG", key, h(str(value)))
            expect = scope["request"]
            if isinstance(expect, type):
                print("ERROR", expect.__name__)
            else:
                for req in expect if isinstance(expect, list) else [expect]:
                    print("REQUEST")
                    print("METHOD", h(req["method"]))
                    u = req["uri"]
                    print("URI", h(u["raw"]), h(u["path"]), h(u["query"]), h(u["fragment"]))
                    print("VERSION", *req["version"])
                    for n, v in req["headers"]:
                        print("HEADER", h(n), h(v))
                    print("BODY", h(req["body"]))
                    for n, v in req.get("trailers", []):
                        print("TRAILER", h(n), h(v))
            print("END")


if __name__ == "__main__":
    main(sys.argv[1])
