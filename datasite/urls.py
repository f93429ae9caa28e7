"""The data owner's pages at a datasite, under ``/site/``."""

from django.urls import path

from datasite.views import consent, datasets, requests

app_name = "datasite"

STUDY = "<str:study>"
urlpatterns = [
    path("site/requests/", requests.request_list, name="requests"),
    path(f"site/requests/{STUDY}/", requests.request_detail, name="request"),
    path(f"site/requests/{STUDY}/v<int:version>/", requests.request_detail, name="request-version"),
    path(f"site/requests/{STUDY}/v<int:version>/decide/", requests.decide, name="decide"),
    path(f"site/requests/{STUDY}/v<int:version>/revoke/", requests.revoke, name="revoke"),
    path("site/datasets/", datasets.dataset_list, name="datasets"),
    path("site/datasets/<slug:name>/", datasets.dataset_detail, name="dataset"),
    path("site/datasets/<slug:name>/epsilon.png", datasets.dataset_epsilon_png, name="dataset-epsilon"),
    path("site/datasets/<slug:name>/mock.png", datasets.dataset_mock_png, name="dataset-mock"),
    path(
        "site/datasets/<slug:name>/mock-images.png",
        datasets.dataset_mock_images_png,
        name="dataset-mock-images",
    ),
    path("site/consent/", consent.consent, name="consent"),
    path("site/consent/record/", consent.consent_record, name="consent-record"),
    path("site/consent/import/", consent.consent_import, name="consent-import"),
]
