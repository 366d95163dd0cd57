"""ferrocorn: what a worker does when the arbiter aborts it (SIGABRT after --timeout)."""
import faulthandler
import signal


class WorkerTimeout(BaseException):
    """Raised where the app was when its worker timed out. A BaseException, like gunicorn's
    SystemExit, so the app's `except Exception:` does not swallow it."""


# The config file's `worker_abort` hook, bound to its worker (set by hooks.rs), or None.
hook = None


def install(log):
    def on_abort(signum, frame):
        log()
        # fd 2 is the error log; faulthandler writes there without taking locks or allocating.
        faulthandler.dump_traceback(2, all_threads=True)
        if hook is not None:
            hook()
        raise WorkerTimeout("the worker timed out and was aborted")

    signal.signal(signal.SIGABRT, on_abort)
