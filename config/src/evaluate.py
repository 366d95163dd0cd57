# Run a gunicorn config file the way gunicorn does and print its module globals as JSON.
# argv[1] is the location: a file path, `file:PATH` or `python:module.name`. The JSON goes to the
# original stdout; anything the config prints goes to stderr, so it cannot corrupt the JSON.
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import traceback
import types


def load(location):
    # As gunicorn: the working directory is importable, so a config can import local modules.
    sys.path.insert(0, os.getcwd())
    if location.startswith("python:"):
        return vars(importlib.import_module(location[len("python:"):]))
    filename = location[len("file:"):] if location.startswith("file:") else location
    name = "__config__"
    if os.path.splitext(filename)[1] in (".py", ".pyc"):
        spec = importlib.util.spec_from_file_location(name, filename)
    else:
        loader = importlib.machinery.SourceFileLoader(name, filename)
        spec = importlib.util.spec_from_file_location(name, filename, loader=loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return vars(module)


def classify(namespace):
    values, callables, others = {}, {}, {}
    for key, value in namespace.items():
        if key.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if callable(value):
            callables[key] = getattr(value, "__qualname__", repr(value))
            continue
        try:
            json.dumps(value, allow_nan=False)
            values[key] = value
        except (TypeError, ValueError):
            others[key] = repr(value)
    return {"values": values, "callables": callables, "others": others}


def main():
    result = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        namespace = load(sys.argv[1])
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    json.dump(classify(namespace), result)
    result.write("\n")
    result.flush()


# `python -c` runs this as __main__; the workers' hook loader imports it for `load` alone.
if __name__ == "__main__":
    main()
