"""A data owner's day at a datasite, in a real browser.

Olga (data owner) logs in, opens a pending code request, sees the highlighted code and the
projected ε, approves it; denies another with a reason (after being told a reason is
needed); withdraws a contributor's consent through the form. Rita (researcher) cannot see
the request nor approve it, even with a valid CSRF token.
"""

from __future__ import annotations

import pytest

from common.roles import DATA_OWNER, RESEARCHER
from datasite import code_requests, consent
from datasite.models import CodeRequest, ConsentEvent, LedgerEntry
from tests.datasite.test_ui import give_consent, make_dataset, make_request, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PASSWORD = "correct-horse-battery-staple-42"


def log_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def test_data_owner_reviews_decides_and_manages_consent(live_server, new_page, shots):
    from playwright.sync_api import expect

    base = live_server.url
    make_user("olga", DATA_OWNER, password=PASSWORD)
    make_user("rita", RESEARCHER, password=PASSWORD)
    ds = make_dataset("lab-a")
    give_consent("c-alice", "c-bob", "c-carol")
    cube = make_request(ds, "Pick the cube")
    drawer = make_request(ds, "Open the drawer", config={"chunk_size": 50}, rounds=4)
    cube_v2 = make_request(
        ds, "Pick the cube", study=cube.study, version=2, config={"chunk_size": 20, "dim_model": 64}
    )
    projected = code_requests.projection(cube_v2)[ds.name]

    page = new_page()
    log_in(page, base, "olga")
    page.goto(f"{base}/site/requests/")
    expect(page.locator("h1")).to_have_text("Code requests")
    expect(page.locator("table.requests").first).to_contain_text("Open the drawer")
    page.screenshot(path=shots / "01-requests.png", full_page=True)

    # review and approve the cube study (v2, with a diff against v1)
    page.locator("table.requests").first.get_by_role("link", name="Pick the cube").click()
    expect(page.locator(".code .highlight").first).to_contain_text('"recipe": "act"')
    expect(page.locator(".highlight .nt").first).to_be_visible()  # JSON keys are highlighted
    expect(page.locator(".diff").first).to_contain_text('+    "chunk_size": 20')
    expect(page.locator("tr.projected")).to_contain_text(f"{projected:.3g}")
    expect(page.locator("tr.projected")).to_contain_text("fits the budget")
    page.screenshot(path=shots / "02-request-review.png", full_page=True)
    page.get_by_role("button", name="Approve").click()
    expect(page.locator(".messages")).to_contain_text("Approved “Pick the cube” (v2)")
    expect(page.locator("h1 .status")).to_have_text("Approved")
    page.screenshot(path=shots / "03-approved.png", full_page=True)
    cube_v2.refresh_from_db()
    assert cube_v2.status == "approved" and cube_v2.decided_by.username == "olga"
    assert LedgerEntry.objects.filter(study=cube.study, kind="reserve").exists()

    # deny the drawer study: first without a reason (refused), then with one
    page.goto(f"{base}/site/requests/{drawer.study}/")
    page.get_by_role("button", name="Deny").click()
    expect(page.locator("#decision .error")).to_contain_text("Please give a reason for the denial")
    page.screenshot(path=shots / "04-deny-needs-reason.png", full_page=False)
    assert CodeRequest.objects.get(pk=drawer.pk).status == "pending"
    page.fill("textarea[name=reason]", "The drawer task records the lab's faces on the top camera.")
    page.get_by_role("button", name="Deny").click()
    expect(page.locator(".messages")).to_contain_text("Denied “Open the drawer”")
    assert CodeRequest.objects.get(pk=drawer.pk).reason.startswith("The drawer task")

    # withdraw Bob's consent
    page.get_by_role("link", name="Consent").click()
    page.fill("#id_contributor", "c-bob")
    page.fill("#id_purpose", "policy-training")
    page.get_by_label("Withdrawn").check()
    page.fill("#id_evidence", "email of 2025-03-02")
    page.get_by_role("button", name="Record").click()
    expect(page.locator(".messages")).to_contain_text("Consent withdrawn for c-bob (policy-training)")
    expect(page.locator("#c-c-bob")).to_contain_text("withdrawn")
    page.screenshot(path=shots / "05-consent.png", full_page=True)
    assert "c-bob" not in consent.consenting("policy-training")
    assert ConsentEvent.objects.filter(
        contributor="c-bob", given=False, evidence="email of 2025-03-02"
    ).exists()

    page.goto(f"{base}/site/datasets/lab-a/")
    expect(page.locator("img.plot").first).to_have_js_property("complete", True)
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=shots / "06-dataset.png", full_page=True)
    page.goto(f"{base}/site/datasets/")
    page.screenshot(path=shots / "07-datasets.png", full_page=True)

    # a researcher can neither see nor approve a pending request
    other = make_request(ds, "Sort the screws")
    rita = new_page()
    log_in(rita, base, "rita")
    response = rita.goto(f"{base}/site/requests/{other.study}/")
    assert response.status == 403
    rita.screenshot(path=shots / "08-researcher-403.png")
    token = next(c["value"] for c in rita.context.cookies() if c["name"] == "csrftoken")
    answer = rita.request.post(
        f"{base}/site/requests/{other.study}/v1/decide/",
        form={
            "csrfmiddlewaretoken": token,
            "decision": "approve",
            "reason": "",
            "code_sha256": other.code_sha256,
            "plan_sha256": other.plan_sha256,
        },
    )
    assert answer.status == 403
    assert CodeRequest.objects.get(pk=other.pk).status == "pending"
