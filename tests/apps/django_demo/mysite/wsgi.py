"""WSGI entry point, as `django-admin startproject` lays it out, plus creating the tables."""

import os

from django.core.management import call_command
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()

# The demo has no migrations: create its tables in the sqlite file if they are missing.
call_command("migrate", run_syncdb=True, verbosity=0)
