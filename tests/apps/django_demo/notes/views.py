import os
import time

from django.db import connection
from django.http import FileResponse, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .models import Note


def index(request):
    notes = Note.objects.order_by("id")
    return render(request, "notes/index.html", {"notes": notes, "vendor": connection.vendor})


@csrf_exempt
@require_POST
def add(request):
    text = request.POST.get("text", "").strip()
    if not text:
        return HttpResponse("missing form field 'text'\n", status=400)
    note = Note.objects.create(text=text)
    return HttpResponse(f"created note {note.id}: {note.text}\n", status=201)


def count(request):
    return JsonResponse({"count": Note.objects.count()})


@require_POST
def protected(request):
    # Not csrf_exempt: without a CSRF token Django's middleware answers 403 first.
    return HttpResponse("unreachable without a CSRF token\n")


def pid(request):
    """The serving process's pid after an optional ?sleep=S, so concurrent requests reach every worker."""
    time.sleep(float(request.GET.get("sleep", "0")))
    return HttpResponse(f"{os.getpid()}\n")


def source(request):
    """This file, as a FileResponse: Django hands it to the server's wsgi.file_wrapper."""
    return FileResponse(open(__file__, "rb"), content_type="text/x-python")
