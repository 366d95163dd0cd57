"""ferrocorn: what a worker does when a request runs past --timeout."""
import faulthandler
import signal


class WorkerTimeout(BaseException):
    """Raised where the app was when its request timed out. A BaseException, like gunicorn's
    SystemExit, so the app's `except Exception:` does not swallow it."""


# The config file's `worker_abort` hook, bound to its worker (set by hooks.rs), or None.
hook = None


def install():
    # The arbiter's SIGABRT (a worker that stopped beating): every thread's stack to fd 2 (the
    # error log) from C, without the GIL, then the worker dies of the signal. SIGABRT can only be
    # had with the other fatal signals (a crash in C then dumps the stacks too).
    faulthandler.enable(file=2, all_threads=True)


def dump_and_hook():
    # faulthandler writes to fd 2 without taking locks or allocating.
    faulthandler.dump_traceback(2, all_threads=True)
    if hook is not None:
        hook()


# Set (with the GIL) just before the main thread is signalled, cleared when its request ends:
# a signal that lands after the request must not interrupt the next one.
armed = False


def install_main_interrupt(signum):
    # The app on the main thread (one app thread: the worker's I/O loop calls it) is interrupted
    # by a signal: unlike an asynchronous exception, its handler also ends a time.sleep().
    def on_interrupt(signum, frame):
        global armed
        if armed:
            armed = False
            raise WorkerTimeout("the request ran past --timeout")

    signal.signal(signum, on_interrupt)
