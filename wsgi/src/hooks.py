"""ferrocorn: the objects a config file's server hooks receive, with the attributes of gunicorn's
that hooks use. Built in the worker (see hooks.rs)."""
import http
import json
import os
import traceback
import types


class Log:
    """The logger methods hooks call (`worker.log.info(...)`); lines go to ferrocorn's error log."""

    def __init__(self, emit):
        self._emit = emit

    def log(self, level, msg, *args, exc_info=False, **_kwargs):
        text = msg % args if args else str(msg)
        if exc_info:
            text += "\n" + traceback.format_exc().rstrip()
        self._emit(level, text)

    def debug(self, msg, *args, **kwargs):
        self.log(10, msg, *args, **kwargs)

    def info(self, msg, *args, **kwargs):
        self.log(20, msg, *args, **kwargs)

    def warning(self, msg, *args, **kwargs):
        self.log(30, msg, *args, **kwargs)

    warn = warning

    def error(self, msg, *args, **kwargs):
        self.log(40, msg, *args, **kwargs)

    def critical(self, msg, *args, **kwargs):
        self.log(50, msg, *args, **kwargs)

    def exception(self, msg, *args, **kwargs):
        kwargs["exc_info"] = True
        self.log(40, msg, *args, **kwargs)


def load(evaluate, location, names):
    """Execute the config file as gunicorn does; its hook callables, by setting name."""
    namespace = evaluate.load(location)
    hooks = {name: namespace[name] for name in names if callable(namespace.get(name))}
    data = {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, types.ModuleType) and not callable(v)}
    return hooks, types.SimpleNamespace(**data)


def objects(emit, cfg, age, master_pid, num_workers):
    """gunicorn's `server` (the arbiter) and `worker`, as far as hooks read them."""
    log = Log(emit)
    server = types.SimpleNamespace(pid=master_pid, num_workers=num_workers, log=log, cfg=cfg)
    worker = types.SimpleNamespace(
        pid=os.getpid(), ppid=master_pid, age=age, log=log, cfg=cfg, alive=True, booted=False,
    )
    return server, worker


def request(method, uri, path, query, protocol, headers):
    """gunicorn's parsed request: header names upper-cased, values decoded as latin-1."""
    major, _, minor = protocol.partition("/")[2].partition(".")
    return types.SimpleNamespace(
        method=method, uri=uri, path=path, query=query, fragment="", scheme="http",
        version=(int(major or 1), int(minor or 0)),
        headers=[(name.upper(), value.decode("latin-1")) for name, value in headers],
    )


def response(status_code):
    try:
        reason = http.HTTPStatus(status_code).phrase
    except ValueError:
        reason = ""
    return types.SimpleNamespace(
        status=f"{status_code} {reason}".rstrip(), status_code=status_code, headers=[],
    )


def guarded(name, hook, log, *args):
    """A hook run by the timeout interrupter: what it raises is logged, never raised there."""
    def run():
        try:
            hook(*args)
        except Exception:
            log.exception("Exception in %s hook", name)
    return run


def master(emit, cfg, master_pid, num_workers):
    """gunicorn's `server` (the arbiter) for the master-side hooks, in the hook runner."""
    return types.SimpleNamespace(pid=master_pid, num_workers=num_workers, log=Log(emit), cfg=cfg)


def master_event(hooks, server, line):
    """Call the hook one event line from the master names; what it raises is logged."""
    event = json.loads(line)
    name = event["hook"]
    if "num_workers" in event:
        server.num_workers = event["num_workers"]
    hook = hooks.get(name)
    if hook is None:
        return
    if name in ("pre_fork", "child_exit"):
        worker = types.SimpleNamespace(
            pid=event.get("pid"), ppid=server.pid, age=event["age"], log=server.log,
            cfg=server.cfg, alive=name == "pre_fork", booted=False,
        )
        args = (server, worker)
    elif name == "nworkers_changed":
        args = (server, event["new"], event["old"])
    else:
        args = (server,)
    try:
        hook(*args)
    except Exception:
        server.log.exception("Exception in %s hook", name)
