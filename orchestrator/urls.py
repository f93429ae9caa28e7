"""The researcher's pages at the orchestrator: ``/studies/`` and ``/federation/``."""

from django.urls import path

from orchestrator import views

app_name = "orchestrator"

STUDY = "studies/<str:study_id>/"
urlpatterns = [
    path("studies/", views.study_list, name="studies"),
    path(STUDY, views.study_detail, name="study"),
    path(f"{STUDY}loss.png", views.study_loss_png, name="study-loss"),
    path(f"{STUDY}epsilon.png", views.study_epsilon_png, name="study-epsilon"),
    path(f"{STUDY}model.safetensors", views.study_model, name="study-model"),
    path("federation/", views.federation, name="federation"),
]
