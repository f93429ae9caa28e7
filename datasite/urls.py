"""The data owner's pages at a datasite, under ``/site/``."""

from django.urls import path

from datasite import views

app_name = "datasite"

STUDY = "<str:study>"
urlpatterns = [
    path("site/requests/", views.request_list, name="requests"),
    path(f"site/requests/{STUDY}/", views.request_detail, name="request"),
    path(f"site/requests/{STUDY}/v<int:version>/", views.request_detail, name="request-version"),
    path(f"site/requests/{STUDY}/v<int:version>/decide/", views.decide, name="decide"),
    path(f"site/requests/{STUDY}/v<int:version>/revoke/", views.revoke, name="revoke"),
    path("site/datasets/", views.dataset_list, name="datasets"),
    path("site/datasets/<slug:name>/", views.dataset_detail, name="dataset"),
    path("site/datasets/<slug:name>/epsilon.png", views.dataset_epsilon_png, name="dataset-epsilon"),
    path("site/datasets/<slug:name>/mock.png", views.dataset_mock_png, name="dataset-mock"),
    path(
        "site/datasets/<slug:name>/mock-images.png", views.dataset_mock_images_png, name="dataset-mock-images"
    ),
    path("site/consent/", views.consent, name="consent"),
    path("site/consent/record/", views.consent_record, name="consent-record"),
    path("site/consent/import/", views.consent_import, name="consent-import"),
]
