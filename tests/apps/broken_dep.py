"""An app module that imports a missing dependency: an import error, not "module not found"."""

import ferrocorn_no_such_dependency  # noqa: F401


def app(environ, start_response):
    raise AssertionError("never reached")
