"""A compliance officer's and a researcher's pages, in a real browser.

Carl (compliance officer) opens the audit page of a datasite from its home page, sees the
chain verified, searches the events, and after a raw-SQL tampering sees the chain BROKEN at
the changed event. Rita (researcher) opens her study at the orchestrator (the live server
then serves the orchestrator's URLconf): status, round r/R, sites, rounds with loss and ε
plots, the model download; then the federation page with a stale site highlighted.
Screenshots go to ``test-output/browser/``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from audit import trail
from audit.models import AuditEvent
from common.roles import COMPLIANCE_OFFICER, RESEARCHER
from orchestrator import checkpoints
from orchestrator.models import Round, StudySite
from privacy.strategies import ServerState
from tests.datasite.test_ui import give_consent, make_user
from tests.orchestrator.test_views import WEIGHTS, make_site, make_study, site_metrics

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PASSWORD = "correct-horse-battery-staple-42"


def log_in(page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def wait_for_images(page) -> None:
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")


def test_compliance_officer_sees_the_chain_verified_then_broken(live_server, new_page, shots):
    from playwright.sync_api import expect

    if connection.vendor != "sqlite":
        pytest.skip("the tampering step uses SQLite's raw SQL (PostgreSQL's trigger refuses it)")
    base = live_server.url
    make_user("carl", COMPLIANCE_OFFICER, password=PASSWORD)
    give_consent("c-alice", "c-bob")
    trail.record("code_request.received", "node:orch", "study:aaaa1111", {"version": 1})

    page = new_page()
    log_in(page, base, "carl")
    page.get_by_role("link", name="Audit log").click()
    expect(page.locator("h1")).to_have_text("Audit log")
    count = AuditEvent.objects.count()  # consent, the request, carl's sign-in
    status = page.locator("#chain-status")
    expect(status).to_have_attribute("data-status", "ok")
    expect(status).to_contain_text("Chain verified")
    expect(status).to_contain_text(f"All {count} events verified")
    expect(status).to_contain_text(AuditEvent.objects.order_by("-seq").first().hash)
    expect(page.locator("table.audit tbody tr")).to_have_count(count)
    page.screenshot(path=shots / "10-audit-verified.png", full_page=True)

    page.fill("#id_action", "consent")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.audit tbody tr")).to_have_count(2)
    expect(page.locator("table.audit tbody")).to_contain_text("contributor:c-bob")
    page.screenshot(path=shots / "11-audit-search.png", full_page=True)

    with connection.cursor() as cursor:  # an attacker with the database file rewrites an event
        cursor.execute("UPDATE compliance_auditevent SET actor = 'mallory' WHERE seq = 2")
    page.goto(f"{base}/compliance/audit/")
    status = page.locator("#chain-status")
    expect(status).to_have_attribute("data-status", "broken")
    expect(status).to_contain_text("Chain BROKEN at event #2")
    expect(status).to_contain_text("seq 2: hash mismatch (content changed)")
    expect(page.locator("#event-2")).to_have_class("problem")
    page.screenshot(path=shots / "12-audit-broken.png", full_page=True)


def test_researcher_follows_a_study_at_the_orchestrator(live_server, new_page, shots, settings, tmp_path):
    from playwright.sync_api import expect

    settings.ROLE = "orchestrator"
    settings.ROOT_URLCONF = "webapp.urls_orchestrator"
    settings.DATA_DIR = tmp_path
    settings.FEDSILO_HEARTBEAT_SECONDS = 10
    base = live_server.url
    rita = make_user("rita", RESEARCHER, password=PASSWORD)
    a, b = make_site("site-a", beat_age=4), make_site("site-b", beat_age=3600)
    study = make_study(rita, status="running", current_round=3, phase="train")
    StudySite.objects.create(
        study=study, datasite=a, dataset="lab-a", status="approved", projected_epsilon=2.5
    )
    StudySite.objects.create(
        study=study, datasite=b, dataset="lab-b", status="denied", reason="faces on camera"
    )
    deadline = timezone.now() + timedelta(hours=1)
    for number, (loss, held, eps) in enumerate([(0.9, 1.4, 0.8), (0.7, 1.1, 1.3)], start=1):
        Round.objects.create(
            study=study,
            number=number,
            status="done",
            participants=["site-a"],
            deadline=deadline,
            metrics={
                "sites": {"site-a": site_metrics(loss, held, eps)},
                "heldout_loss": held,
                "epsilon": {"site-a/lab-a": eps},
            },
        )
    Round.objects.create(study=study, number=3, participants=["site-a"], deadline=deadline)
    checkpoints.save(study.pk, 2, WEIGHTS, ServerState(strategy="fedavg"))

    page = new_page()
    log_in(page, base, "rita")
    page.get_by_role("link", name="Studies").first.click()
    expect(page.locator("h1")).to_have_text("Studies")
    page.screenshot(path=shots / "20-research-studies.png", full_page=True)
    page.get_by_role("link", name="Pick the cube").click()
    expect(page.locator("#study-status")).to_have_text("Running")
    expect(page.locator("#study-round")).to_contain_text("3 / 3")
    expect(page.locator("table.sites")).to_contain_text("faces on camera")
    expect(page.locator("table.sites")).to_contain_text("2.5")
    expect(page.locator("table.rounds")).to_contain_text("0.7000")
    wait_for_images(page)
    page.screenshot(path=shots / "21-research-study.png", full_page=True)
    with page.expect_download() as download:
        page.locator("#download-model").click()
    assert download.value.suggested_filename == f"{study.pk}.safetensors"
    assert Path(download.value.path()).read_bytes() == checkpoints.weights_bytes(study.pk, 2)

    page.get_by_role("link", name="Federation").click()
    expect(page.locator("#site-site-b")).to_have_class("stale")
    expect(page.locator("#site-site-a")).not_to_have_class("stale")
    expect(page.locator("#site-site-b")).to_contain_text(re.compile(r"\b360\d s"))
    page.screenshot(path=shots / "22-research-federation.png", full_page=True)
    assert page.goto(f"{base}/compliance/audit/").status == 403  # a researcher reads no audit log
