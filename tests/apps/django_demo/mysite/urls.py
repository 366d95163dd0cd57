from django.urls import path

from notes import views

urlpatterns = [
    path("", views.index),
    path("notes/add", views.add),
    path("notes/count", views.count),
    path("protected", views.protected),
    path("pid", views.pid),
    path("source", views.source),
]
