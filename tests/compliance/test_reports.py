"""Compliance reports: every figure matches the database; PDF text, tampering, signatures, roles.

A scripted datasite history is built with models and services (no dataset files): two studies
(one approved with two rounds charged to the ledger, one denied with a reason), three
contributors' consent with one withdrawal between round 1 and round 2, audit events as the
services record them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit import trail
from audit.models import AuditEvent
from common.node import create_node
from common.protocol import CodeBundle, CodeRequestIn, DPPlan, Plan, bundle_sha256
from common.roles import COMPLIANCE_OFFICER, DATA_OWNER, RESEARCHER
from compliance import signing
from compliance.blocks import eps_text, ranges
from compliance.html import render_html
from compliance.pdf import render_pdf
from compliance.reports import SCHEMA, build_report, node_settings
from compliance.scope import ReportError, Scope, make_scope
from compliance.values import INFINITY, num
from datasite import budget, code_requests, consent, studies
from datasite.models import CodeRequest, ConsentEvent, Dataset, LedgerEntry, RoundRun
from datasite.reports import TIMELINE_POINTS
from privacy.accounting import Mechanism, epsilon
from tests.availability import unavailable

db = pytest.mark.django_db
PURPOSE = "policy-training"
OWNERS = ["c-a"] * 4 + ["c-b"] * 3 + ["c-c"] * 3  # episode → contributor
ROUND_1 = list(range(10))
ROUND_2 = [0, 1, 2, 3, 7, 8, 9]  # c-b (episodes 4-6) withdrew between the rounds
TABLE, TRIGGER = "compliance_auditevent", "compliance_auditevent_append_only"


# ----------------------------------------------------------------------------- the scripted history


def make_user(username: str, *roles: str) -> User:
    user = User.objects.create_user(username)
    for role in roles:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


def make_dataset(name: str, owners: list[str]) -> Dataset:
    joint = {"dtype": "float32", "shape": [6], "names": [f"j{i}" for i in range(6)]}
    summary = {
        "contributors": {str(e): who for e, who in enumerate(owners)},
        "features": {"observation.state": joint, "action": joint,
                     "observation.images.top": {"dtype": "video", "shape": [48, 64, 3]}},
        "stats": {}, "robot_type": "so100", "fps": 30, "cameras": ["observation.images.top"],
        "episode_lengths": {str(e): 50 for e in range(len(owners))},
    }
    return Dataset.objects.create(name=name, root=f"/nonexistent/{name}", repo_id=f"local/{name}",
                                  summary=summary, mock={}, num_episodes=len(owners),
                                  num_frames=50 * len(owners), epsilon_max=8.0, delta=1e-5)


def make_request(ds: Dataset, title: str, aggregation: str) -> CodeRequest:
    code = CodeBundle(recipe="act", config={"chunk_size": 10, "title": title})
    plan = Plan(rounds=2, local_steps=5, batch_size=2, aggregation=aggregation,
                dp=DPPlan(noise_multiplier=1.5, clip_norm=1.0))
    return code_requests.receive_code_request(CodeRequestIn(
        study=uuid.uuid4().hex, version=1, title=title, researcher="dr-rivera", code=code,
        code_sha256=bundle_sha256(code), plan=plan, datasets=[ds.name],
        sites=[settings.NODE_NAME, "site-b"]))


def run_round(cr: CodeRequest, ds: Dataset, number: int, episodes: list[int], started) -> RoundRun:
    plan = studies.plan_of(cr)
    mech = budget.round_mechanism(plan, consent.training_units(ds, plan, consent.split_episodes(ds, plan)))
    run = RoundRun.objects.create(
        request=cr, study=cr.study, round=number, assignment={}, status=RoundRun.Status.DONE,
        episodes_read={ds.name: episodes}, num_examples=50 * len(episodes), started_at=started,
        finished_at=started + timedelta(minutes=5))
    budget.charge(ds, cr.study, number, mech)
    trail.record("data.accessed", trail.SYSTEM, f"dataset:{ds.name}",
                 {"study": cr.study, "round": number, "episodes": episodes})
    return run


@pytest.fixture
def history(db) -> dict:
    now = timezone.now()
    users = {DATA_OWNER: make_user("olga", DATA_OWNER),
             COMPLIANCE_OFFICER: make_user("carl", COMPLIANCE_OFFICER),
             RESEARCHER: make_user("rita", RESEARCHER)}
    lab_a, lab_b = make_dataset("lab-a", OWNERS), make_dataset("lab-b", ["c-a", "c-c"])
    for who in ("c-a", "c-b", "c-c"):
        consent.record_consent(who, PURPOSE, True, "form-1", users[DATA_OWNER])
    ConsentEvent.objects.update(at=now - timedelta(hours=3))
    approved = make_request(lab_a, "Pick the cube", "secagg")
    code_requests.decide(approved, users[DATA_OWNER], True, approved.code_sha256, "fine")
    denied = make_request(lab_b, "Film the lab", "plain")
    code_requests.decide(denied, users[DATA_OWNER], False, denied.code_sha256,
                    "plain aggregation is not allowed here")
    run_round(approved, lab_a, 1, ROUND_1, now - timedelta(hours=2))
    withdrawal = consent.record_consent("c-b", PURPOSE, False, "email-7", users[DATA_OWNER])
    ConsentEvent.objects.filter(pk=withdrawal.pk).update(at=now - timedelta(hours=1))
    run_round(approved, lab_a, 2, ROUND_2, now - timedelta(minutes=30))
    return {"users": users, "lab_a": lab_a, "lab_b": lab_b,
            "approved": CodeRequest.objects.get(pk=approved.pk),
            "denied": CodeRequest.objects.get(pk=denied.pk)}


def site_report(history: dict) -> dict:
    return build_report(Scope("site"), history["users"][COMPLIANCE_OFFICER])


# ----------------------------------------------------------------------------- figures


@db
@pytest.mark.postgres
def test_every_figure_matches_the_database(history):
    report = site_report(history)
    sec = report["sections"]
    assert report["schema"] == SCHEMA
    assert next(iter(sec)) == "integrity" and sec["integrity"]["ok"] and report["warnings"] == []
    json.dumps(report, allow_nan=False)  # canonical-JSON-able: no NaN or ∞ numbers

    budgets = {b["dataset"]: b for b in sec["budgets"]["datasets"]}
    for ds in (history["lab_a"], history["lab_b"]):
        view = budget.view(ds)
        row = budgets[ds.name]
        assert (row["spent"], row["reserved"], row["committed"]) == (
            num(view.spent), num(view.reserved), num(view.committed))
        assert row["epsilon_max"] == ds.epsilon_max and row["delta"] == ds.delta
        assert row["charges"] == ds.ledger.filter(kind="charge").count()
        dpia = {d["dataset"]: d["spent"] for d in sec["dpia"]["epsilon_vs_budget"]}
        assert dpia[ds.name] == num(view.spent)
    assert budgets["lab-a"]["charges"] == 2 and budgets["lab-a"]["spent"] > 0
    assert budgets["lab-a"]["timeline"][-1]["spent"] == pytest.approx(budgets["lab-a"]["spent"])
    assert budgets["lab-b"]["spent"] == 0.0

    access = sec["data_access"]
    assert [(r["round"], r["counts"]) for r in access["rounds"]] == [(1, {"lab-a": 10}), (2, {"lab-a": 7})]
    assert [r["episodes"]["lab-a"] for r in access["rounds"]] == [ROUND_1, ROUND_2]
    assert access["totals"] == [
        {"dataset": "lab-a", "rounds": 2, "episode_reads": 17, "distinct_episodes": 10}]

    approvals = {r["study"]: r for r in sec["approvals"]["requests"]}
    for cr in (history["approved"], history["denied"]):
        row = approvals[cr.study]
        assert (row["code_sha256"], row["plan_sha256"], row["status"], row["reason"], row["reviewer"]) == (
            cr.code_sha256, cr.plan_sha256, cr.status, cr.reason, "olga")
        assert row["plan"] == cr.plan and row["decided_at"] == cr.decided_at.isoformat(timespec="seconds")
    assert approvals[history["denied"].study]["status"] == "denied"
    assert sec["dpia"]["approvals"] == {"approved": 1, "denied": 1}
    assert sec["dpia"]["aggregation_modes"] == {"secagg": [history["approved"].study]}

    consent = sec["consent"]
    coverage = {d["dataset"]: d for d in consent["purposes"][0]["datasets"]}
    assert consent["purposes"][0]["purpose"] == PURPOSE
    assert (consent["purposes"][0]["consenting"], consent["purposes"][0]["withdrawn"]) == (2, 1)
    assert coverage["lab-a"] == {"dataset": "lab-a", "episodes": 10, "episodes_covered": 7,
                                 "contributors": 3, "contributors_covered": 2}
    [withdrawal] = consent["withdrawals"]
    assert (withdrawal["contributor"], withdrawal["episodes"]) == ("c-b", {"lab-a": [4, 5, 6]})
    assert withdrawal["at"] == ConsentEvent.objects.get(given=False).at.isoformat(timespec="seconds")
    assert withdrawal["studies"] == [{
        "study": history["approved"].study, "rounds_read_before": [1], "last_round_read": 1,
        "rounds_excluded": [2], "first_round_excluded": 2, "read_after_withdrawal": []}]
    assert consent["violations"] == 0

    record = sec["record_of_processing"]
    assert record["transfers_of_raw_data"].startswith("none")
    assert record["data_subjects"]["per_dataset"] == {"lab-a": 3, "lab-b": 2}
    [recipient] = record["recipients"][0]["studies"]  # the denied study sends nothing
    assert (recipient["study"], recipient["aggregation"]) == (history["approved"].study, "secagg")
    assert "only the sum" in recipient["receives"]
    assert record["controller"] == 'not configured (set "controller" in node.json)'

    log = sec["event_log"]
    assert log["count"] == AuditEvent.objects.count() == report["chain"]["count"]
    last = AuditEvent.objects.order_by("-seq").first()
    assert report["chain"]["head_hash"] == last.hash == report["generation_event"]["hash"]
    assert log["events"][-1]["action"] == "report.generated"
    assert log["actions"]["consent.withdrawn"] == 1


@db
@pytest.mark.postgres
def test_study_scope_covers_only_that_study(history):
    study = history["approved"].study
    report = build_report(make_scope(study=study), "carl")
    sec = report["sections"]
    assert report["scope"] == {"kind": "study", "study": study}
    assert [r["study"] for r in sec["approvals"]["requests"]] == [study]
    assert {r["study"] for r in sec["data_access"]["rounds"]} == {study}
    assert [b["dataset"] for b in sec["budgets"]["datasets"]] == ["lab-a"]
    assert sec["budgets"]["datasets"][0]["study_charges"] == 2
    events = sec["event_log"]["events"]
    assert events and all(e["target"] == f"study:{study}" or e["data"].get("study") == study for e in events)
    assert {"code_request.approved", "data.accessed", "report.generated"} <= {e["action"] for e in events}
    count = AuditEvent.objects.count()
    with pytest.raises(ReportError, match="no code request"):
        build_report(make_scope(study="0" * 32), "carl")
    assert AuditEvent.objects.count() == count  # a refused report records nothing


@db
def test_time_range_scope(history):
    later = (timezone.now() + timedelta(days=2)).date().isoformat()
    report = build_report(make_scope(since=later), "carl")
    sec = report["sections"]
    assert sec["approvals"]["requests"] == [] and sec["data_access"]["rounds"] == []
    assert sec["consent"]["withdrawals"] == [] and sec["event_log"]["count"] == 0
    today = timezone.now().date().isoformat()
    report = build_report(make_scope(since=today, until=today), "carl")
    assert report["sections"]["event_log"]["count"] >= 1
    for bad in ({}, {"site": True, "study": "x"}, {"since": "yesterday"},
                {"since": "2025-02-01", "until": "2025-01-01"}):
        with pytest.raises(ReportError):
            make_scope(**bad)


@db
def test_budget_timeline_is_the_ledger_timeline(history):
    lab_a = history["lab_a"]
    entries = list(lab_a.ledger.order_by("at", "id"))
    assert [e.kind for e in entries] == ["reserve", "charge", "charge"]
    reserved, first, second = (Mechanism(e.noise_multiplier, e.sample_rate, e.steps) for e in entries)
    assert reserved.steps == first.steps + second.steps  # both rounds reserved at approval
    left = Mechanism(reserved.noise_multiplier, reserved.sample_rate, reserved.steps - first.steps)
    ours = budget.load_ledger(lab_a).timeline(TIMELINE_POINTS)
    assert [p.at for p in ours] == [e.at for e in entries]
    assert [p.spent for p in ours] == pytest.approx(
        [0.0, epsilon([first], lab_a.delta), epsilon([first, second], lab_a.delta)])
    assert [p.committed for p in ours] == pytest.approx(
        [epsilon([reserved], lab_a.delta), epsilon([first, left], lab_a.delta),
         epsilon([first, second], lab_a.delta)])
    row = {b["dataset"]: b for b in site_report(history)["sections"]["budgets"]["datasets"]}["lab-a"]
    assert row["timeline"] == [{"at": e.at.isoformat(timespec="seconds"), "spent": num(p.spent),
                                "committed": num(p.committed)} for e, p in zip(entries, ours, strict=True)]
    thinned = budget.load_ledger(lab_a).timeline(max_points=2)
    assert [p.at for p in thinned] == [entries[0].at, entries[-1].at] and thinned[-1] == ours[-1]


@db
def test_generating_a_report_is_an_audit_event(history):
    before = AuditEvent.objects.count()
    report = site_report(history)
    event = AuditEvent.objects.order_by("-seq").first()
    assert AuditEvent.objects.count() == before + 1
    assert (event.action, event.actor) == ("report.generated", "carl")
    assert event.seq == report["generation_event"]["seq"]
    assert event.data["scope"] == {"kind": "site"}


# ----------------------------------------------------------------------------- formats


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    if shutil.which("pdftotext") is None:
        unavailable("pdftotext (poppler-utils) is not installed")
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout


@db
def test_pdf_text_holds_the_key_figures(history, tmp_path):
    report = site_report(history)
    pdf = render_pdf(report)
    assert pdf.startswith(b"%PDF") and b"/Subtype /Image" in pdf  # the ε plots are embedded
    text = pdf_text(pdf, tmp_path)
    for ds in (history["lab_a"], history["lab_b"]):
        view = budget.view(ds)
        assert eps_text(view.spent) in text and eps_text(view.reserved) in text
    assert history["approved"].code_sha256[:16] in text and history["denied"].code_sha256[:16] in text
    assert report["chain"]["head_hash"] in text
    assert "plain aggregation is not allowed here" in text
    assert "1. Audit chain integrity" in text and "The audit chain verified" in text
    assert "0–3, 7–9" in text  # round 2's episodes in the attachment


@db
def test_html_report_is_self_contained(history):
    LedgerEntry.objects.create(dataset=history["lab_b"], study="f" * 32, round=1, kind="charge",
                               noise_multiplier=0.0, sample_rate=0.5, steps=1, unit="episode")  # no DP noise
    report = site_report(history)
    lab_b = report["sections"]["budgets"]["datasets"][1]
    assert (lab_b["dataset"], lab_b["spent"], lab_b["remaining"]) == ("lab-b", INFINITY, 0.0)
    assert "datasets over budget: lab-b" in report["sections"]["dpia"]["risks"][0]["mitigations"]
    assert signing.verify_report(report, signing.sign_report(report)).ok  # ∞ is canonical-JSON-safe
    html = render_html(report)
    assert html.startswith("<!doctype html>")
    assert html.count('src="data:image/png;base64,') == 2  # one ε plot per dataset
    assert report["chain"]["head_hash"] in html and history["approved"].code_sha256 in html
    assert "∞ (no DP noise)" in html
    assert html.index("Audit chain integrity") < html.index("Record of processing")


def test_controller_and_contacts_come_from_node_json(settings, tmp_path):
    (tmp_path / "node.json").write_text(json.dumps(
        {"role": "datasite", "name": "lab-a", "public_url": "https://lab-a.example",
         "controller": "Lab A Robotics GmbH, Berlin", "contact": "privacy@lab-a.example"}))
    settings.NODE_DIR = tmp_path
    assert node_settings() == {
        "controller": "Lab A Robotics GmbH, Berlin", "contact": "privacy@lab-a.example",
        "dpo": 'not configured (set "dpo" in node.json)',
        "retention": 'not configured (set "retention" in node.json)'}
    assert ranges([7, 0, 1, 2, 5, 8]) == "0–2, 5, 7–8" and ranges([]) == "—"


# ----------------------------------------------------------------------------- tampering


@contextlib.contextmanager
def as_table_owner():
    """On PostgreSQL the append-only trigger refuses raw SQL: turn it off as the table owner could."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER {TRIGGER}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER {TRIGGER}")


@db
@pytest.mark.postgres
def test_tampered_chain_is_reported_in_the_first_section(history, tmp_path):
    if connection.vendor == "postgresql":
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), \
                connection.cursor() as c:
            c.execute(f"UPDATE {TABLE} SET actor = 'mallory' WHERE seq = 3")  # noqa: S608
    with as_table_owner(), connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET actor = 'mallory' WHERE seq = 3")  # noqa: S608
    report = site_report(history)
    first = next(iter(report["sections"].values()))
    assert first["status"] == "BROKEN" and not first["ok"] and not report["chain"]["ok"]
    assert first["message"].startswith("WARNING: the audit chain is BROKEN at seq 3")
    assert report["warnings"][0] == first["message"]
    assert report["chain"]["count"] == 2
    log = report["sections"]["event_log"]
    assert [e["seq"] for e in log["events"] if not e["verified"]] == list(range(3, log["count"] + 1))
    assert report["chain"]["head_hash"] == AuditEvent.objects.get(seq=2).hash
    html = render_html(report)
    assert html.index("the audit chain is BROKEN") < html.index("Record of processing")
    text = pdf_text(render_pdf(report), tmp_path)
    assert text.index("BROKEN") < text.index("Record of processing")


# ----------------------------------------------------------------------------- signatures


@db
@pytest.mark.postgres
def test_verify_report_accepts_intact_and_refuses_modified(history, tmp_path, capsys):
    path, sig = signing.write_signed(site_report(history), tmp_path / "report.json")
    assert sig == tmp_path / "report.json.sig"
    call_command("verify_report", str(path), str(sig))
    assert capsys.readouterr().out.startswith("valid: signed by node")

    data = json.loads(path.read_text())
    data["sections"]["budgets"]["datasets"][0]["spent"] = 0.01
    (tmp_path / "modified.json").write_text(json.dumps(data))
    with pytest.raises(CommandError, match="signature does not verify"):
        call_command("verify_report", str(tmp_path / "modified.json"), str(sig))
    (tmp_path / "bad.sig").write_text("not base64!")
    with pytest.raises(CommandError, match="signature does not verify"):
        call_command("verify_report", str(path), str(tmp_path / "bad.sig"))
    (tmp_path / "garbage.json").write_text("[1, 2")
    with pytest.raises(CommandError, match="not a JSON report"):
        call_command("verify_report", str(tmp_path / "garbage.json"), str(sig))


@db
def test_verify_report_refuses_a_head_outside_the_chain(history):
    report = site_report(history)
    report["chain"]["head_hash"] = "f" * 64  # re-signed with the node's own key: still refused
    result = signing.verify_report(report, signing.sign_report(report))
    assert not result.ok and "is not in this node's audit chain" in result.summary()
    report["node"]["public_key"] = trail.public_key_b64(Ed25519PrivateKey.generate())
    assert "signature does not verify" in signing.verify_report(report, signing.sign_report(report)).summary()


@db
def test_verify_report_refuses_another_nodes_report(history, settings, tmp_path):
    report = site_report(history)  # signed with this process's ephemeral key (no node folder)
    signature = signing.sign_report(report)
    assert signing.verify_report(report, signature).ok
    settings.NODE_DIR = create_node(tmp_path / "node", "datasite", "lab-a", "https://lab-a.example").dir
    result = signing.verify_report(report, signature)
    assert "signed by another key than this node's signing key" in result.summary()


@db
def test_command_writes_each_format(history, tmp_path, capsys):
    out = tmp_path / "r.json"
    call_command("compliance_report", "--study", history["approved"].study, "--format", "json",
                 "--out", str(out))
    assert "audit head" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert signing.verify_report(report, (tmp_path / "r.json.sig").read_text()).ok
    assert report["generated_by"].startswith("cli")
    call_command("compliance_report", "--site", "--format", "pdf", "--out", str(tmp_path / "r.pdf"))
    assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")
    call_command("compliance_report", "--since", "2020-01-01", "--until", "2999-12-31", "--format", "html",
                 "--out", str(tmp_path / "r.html"))
    assert "Compliance report" in (tmp_path / "r.html").read_text()
    with pytest.raises(CommandError, match="exactly one scope"):
        call_command("compliance_report", "--site", "--study", "x", "--out", str(tmp_path / "x.json"))


# ----------------------------------------------------------------------------- web


@db
def test_only_compliance_officers_and_data_owners_get_reports(history, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    url = reverse("compliance:reports")
    officer = Client()
    officer.force_login(history["users"][COMPLIANCE_OFFICER])
    assert officer.get(url).status_code == 200
    response = officer.post(url, {"scope": "study", "study": history["approved"].study})
    assert response.status_code == 302
    seq = AuditEvent.objects.order_by("-seq").first().seq
    assert response["Location"] == reverse("compliance:report", args=[seq])
    pages = {name: reverse(f"compliance:{name}", args=[seq])
             for name in ("report", "report-pdf", "report-json", "report-sig")}

    page = officer.get(pages["report"])
    assert page.status_code == 200
    assert b"Audit chain integrity" in page.content and b"valid: signed" in page.content
    owner = Client()
    owner.force_login(history["users"][DATA_OWNER])
    pdf = owner.get(pages["report-pdf"])
    assert (pdf.status_code, pdf["Content-Type"]) == (200, "application/pdf")
    assert pdf.content.startswith(b"%PDF")
    report = json.loads(owner.get(pages["report-json"]).content)
    assert signing.verify_report(report, owner.get(pages["report-sig"]).content.decode()).ok
    assert report["sections"]["event_log"]["events"][-1]["seq"] == seq

    researcher = Client()
    researcher.force_login(history["users"][RESEARCHER])
    assert researcher.post(url, {"scope": "site"}).status_code == 403
    anonymous = Client()
    for link in [url, *pages.values()]:
        assert researcher.get(link).status_code == 403, link
        response = anonymous.get(link)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login")), link
    assert AuditEvent.objects.filter(action="report.generated").count() == 1

    bad = officer.post(url, {"scope": "range", "since": "2025-02-01", "until": "2025-01-01"})
    assert bad.status_code == 400 and b"starts after it ends" in bad.content
    assert officer.get(reverse("compliance:report", args=[seq + 999])).status_code == 404


# ----------------------------------------------------------------------------- orchestrator


@db
def test_orchestrator_study_report(settings, tmp_path):
    from orchestrator.models import Datasite, Round, SiteUpdate, Study, StudySite

    settings.ROLE = "orchestrator"
    researcher = make_user("rita", RESEARCHER)
    sites = [Datasite.objects.create(name=n, account=make_user(f"peer-{n}"), status="joined")
             for n in ("a", "b")]
    study = Study.objects.create(title="Pick", researcher=researcher, code={}, code_sha256="c" * 64,
                                 plan={"rounds": 2, "aggregation": "secagg", "dp": {"noise_multiplier": 1.5}},
                                 plan_sha256="d" * 64, status="running", current_round=1)
    StudySite.objects.create(study=study, datasite=sites[0], dataset="lab-a", status="approved",
                             projected_epsilon=2.5, episodes=8)
    StudySite.objects.create(study=study, datasite=sites[1], dataset="lab-b", status="denied", reason="no")
    rnd = Round.objects.create(study=study, number=1, participants=["a"], status="done",
                               deadline=timezone.now())
    SiteUpdate.objects.create(round=rnd, datasite=sites[0], num_examples=400)
    trail.record("study.created", researcher, f"study:{study.id}", {})

    report = build_report(make_scope(study=study.id), "carl")
    sec = report["sections"]
    assert list(sec) == ["integrity", "record_of_processing", "studies", "sites", "rounds", "event_log"]
    assert sec["studies"][0]["code_sha256"] == "c" * 64
    assert [(s["site"], s["status"], s["reason"]) for s in sec["sites"]] == [("a", "approved", ""),
                                                                           ("b", "denied", "no")]
    assert sec["rounds"][0]["updates"] == 1 and sec["event_log"]["count"] == 2
    assert report["node"]["role"] == "orchestrator"
    assert render_pdf(report).startswith(b"%PDF")
    assert "denied" in render_html(report)
    assert num(float("inf")) == INFINITY
    with pytest.raises(ReportError, match="no study"):
        build_report(make_scope(study="nope"), "carl")
