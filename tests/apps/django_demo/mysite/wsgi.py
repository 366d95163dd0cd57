"""WSGI entry point, as `django-admin startproject` lays it out, plus creating the tables."""

import fcntl
import os

from django.conf import settings
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()

# The demo has no migrations: create its tables in the sqlite file if they are missing. Every
# worker imports this module at the same time (without --preload), and two concurrent `migrate`
# runs both see a table missing and both create it ("table already exists"), or one times out
# ("database is locked"): either would fail the import and stop the server. An exclusive lock
# beside the database file lets one worker create the tables while the others wait, then find them.
with open(settings.DATABASES["default"]["NAME"] + ".migrate-lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    call_command("migrate", run_syncdb=True, verbosity=0)
