"""The data owner's web UI at a datasite: roles, decisions, consent, plots.

Datasets are database rows built from a hand-written summary (no files, no lerobot import);
code requests arrive through ``code_requests.receive_code_request`` as the orchestrator sends them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from common.protocol import CodeBundle, CodeRequestIn, DPPlan, Plan, bundle_sha256
from common.roles import COMPLIANCE_OFFICER, DATA_OWNER, NODE_ADMIN, RESEARCHER
from compliance.plots import epsilon_png
from datasite import budget, code_requests, plots
from datasite.consent import consenting, record_consent, split_episodes
from datasite.models import CodeRequest, ConsentEvent, Dataset, LedgerEntry
from datasite.studies import plan_of
from datasite.training.dataset import SO100_JOINT_NAMES, DatasetSummary, mock_preview
from datasite.views.requests import code_text
from privacy.accounting import Mechanism, epsilon
from privacy.ledger import Entry, Ledger

PNG = b"\x89PNG\r\n\x1a\n"
OWNERS = ["c-alice"] * 4 + ["c-bob"] * 3 + ["c-carol"] * 3  # episode → contributor


# ----------------------------------------------------------------------------- builders


def make_user(username: str, *roles: str, password: str | None = None) -> User:
    """A user in the groups ``roles`` (no usable password unless given: hashing is slow)."""
    user = User.objects.create_user(username, password=password)
    for role in roles:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


def make_dataset(
    name: str = "lab-a", owners: list[str] | None = None, epsilon_max: float = 20.0, delta: float = 1e-5
) -> Dataset:
    """A registered dataset row whose summary and mock look like ``register_dataset``'s."""
    owners = owners or OWNERS
    joint = {"dtype": "float32", "shape": [6], "names": list(SO100_JOINT_NAMES)}
    scalar = {"shape": [1], "names": None}
    features = {
        "observation.state": joint,
        "action": joint,
        "observation.images.top": {
            "dtype": "image",
            "shape": [32, 40, 3],
            "names": ["height", "width", "channels"],
        },
        "contributor.id": {"dtype": "int64", **scalar},
        "timestamp": {"dtype": "float32", **scalar},
        "frame_index": {"dtype": "int64", **scalar},
        "episode_index": {"dtype": "int64", **scalar},
        "index": {"dtype": "int64", **scalar},
        "task_index": {"dtype": "int64", **scalar},
    }
    summary = DatasetSummary(
        repo_id=f"local/{name}",
        root=f"/nonexistent/{name}",
        codebase_version="v3.0",
        robot_type="so100",
        fps=30,
        num_episodes=len(owners),
        num_frames=60 * len(owners),
        features=features,
        cameras=["observation.images.top"],
        contributors=dict(enumerate(owners)),
        stats={k: {"mean": [0.0] * 6, "std": [1.0] * 6} for k in ("observation.state", "action")},
        episode_lengths={e: 60 for e in range(len(owners))},
    )
    return Dataset.objects.create(
        name=name,
        root=summary.root,
        repo_id=summary.repo_id,
        summary=summary.to_dict(),
        mock=mock_preview(summary),
        num_episodes=summary.num_episodes,
        num_frames=summary.num_frames,
        epsilon_max=epsilon_max,
        delta=delta,
    )


def make_request(
    ds: Dataset,
    title: str = "Pick the cube",
    study: str | None = None,
    version: int = 1,
    config: dict | None = None,
    **plan: object,
) -> CodeRequest:
    """A code request as the orchestrator delivers it."""
    code = CodeBundle(recipe="act", config=config or {"chunk_size": 10, "dim_model": 64})
    plan_fields = {"rounds": 2, "local_steps": 5, "batch_size": 2, "dp": DPPlan(noise_multiplier=1.5), **plan}
    body = CodeRequestIn(
        study=study or uuid.uuid4().hex,
        version=version,
        title=title,
        researcher="dr-rivera",
        code=code,
        code_sha256=bundle_sha256(code),
        plan=Plan(**plan_fields),
        datasets=[ds.name],
        sites=[settings.NODE_NAME, "other-site"],
    )
    return code_requests.receive_code_request(body)


def give_consent(*contributors: str, purpose: str = "policy-training") -> None:
    for who in contributors:
        record_consent(who, purpose, True, "form-1")


@pytest.fixture
def world(db) -> dict:
    """Users of every role, one dataset, a pending and an approved request, some consent."""
    users = {
        DATA_OWNER: make_user("olga", DATA_OWNER),
        RESEARCHER: make_user("rita", RESEARCHER),
        COMPLIANCE_OFFICER: make_user("carl", COMPLIANCE_OFFICER),
        NODE_ADMIN: make_user("nina", NODE_ADMIN),
    }
    ds = make_dataset()
    give_consent("c-alice", "c-bob")
    pending = make_request(ds, "Pick the cube")
    approved = make_request(ds, "Stack blocks")
    code_requests.decide(approved, users[DATA_OWNER], True, approved.code_sha256, "fine")
    return {"users": users, "ds": ds, "pending": pending, "approved": CodeRequest.objects.get(pk=approved.pk)}


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def version_url(name: str, cr: CodeRequest) -> str:
    return reverse(f"datasite:{name}", args=[cr.study, cr.version])


def decide_data(cr: CodeRequest, decision: str, reason: str = "", code_sha256: str | None = None) -> dict:
    return {
        "decision": decision,
        "reason": reason,
        "code_sha256": code_sha256 or cr.code_sha256,
        "plan_sha256": cr.plan_sha256,
    }


def csv_file(text: str) -> SimpleUploadedFile:
    return SimpleUploadedFile("consent.csv", text.encode(), content_type="text/csv")


# ----------------------------------------------------------------------------- role × view matrix

PAGES: dict[str, Callable[[dict], str]] = {
    "requests": lambda w: reverse("datasite:requests"),
    "request": lambda w: reverse("datasite:request", args=[w["pending"].study]),
    "request-version": lambda w: version_url("request-version", w["approved"]),
    "datasets": lambda w: reverse("datasite:datasets"),
    "dataset": lambda w: reverse("datasite:dataset", args=[w["ds"].name]),
    "dataset-epsilon": lambda w: reverse("datasite:dataset-epsilon", args=[w["ds"].name]),
    "dataset-mock": lambda w: reverse("datasite:dataset-mock", args=[w["ds"].name]),
    "consent": lambda w: reverse("datasite:consent"),
}
DATASET_PAGES = {"datasets", "dataset", "dataset-epsilon", "dataset-mock"}


def page_status(role: str | None, page: str) -> int:
    if role is None:
        return 302
    if role in (DATA_OWNER, COMPLIANCE_OFFICER):
        return 200
    return 200 if role == NODE_ADMIN and page in DATASET_PAGES else 403


@pytest.mark.django_db
@pytest.mark.parametrize("role", [DATA_OWNER, COMPLIANCE_OFFICER, NODE_ADMIN, RESEARCHER, None])
def test_pages_by_role(world, role):
    client = client_for(world["users"][role] if role else None)
    for page, url_of in PAGES.items():
        url = url_of(world)
        response = client.get(url)
        assert response.status_code == page_status(role, page), (page, role, response.status_code)
        if role is None:
            assert response["Location"].startswith(reverse("login")), page


def _actions(w: dict) -> dict[str, tuple[str, dict]]:
    return {
        "approve": (version_url("decide", w["pending"]), decide_data(w["pending"], "approve")),
        "deny": (version_url("decide", w["pending"]), decide_data(w["pending"], "deny", "not now")),
        "revoke": (version_url("revoke", w["approved"]), {"reason": "contract ended"}),
        "consent": (
            reverse("datasite:consent-record"),
            {"contributor": "c-carol", "purpose": "policy-training", "given": "true", "evidence": "f-9"},
        ),
        "import": (
            reverse("datasite:consent-import"),
            {"file": csv_file("contributor,purpose,given,evidence\nc-carol,policy-training,yes,f-9\n")},
        ),
    }


def _state(w: dict) -> tuple:
    return (
        tuple(CodeRequest.objects.order_by("pk").values_list("status", flat=True)),
        LedgerEntry.objects.count(),
        ConsentEvent.objects.count(),
    )


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["approve", "deny", "revoke", "consent", "import"])
@pytest.mark.parametrize("role", [COMPLIANCE_OFFICER, NODE_ADMIN, RESEARCHER, None])
def test_only_data_owners_act(world, role, action):
    client = client_for(world["users"][role] if role else None)
    url, data = _actions(world)[action]
    before = _state(world)
    response = client.post(url, data)
    assert response.status_code == (302 if role is None else 403)
    if role is None:
        assert response["Location"].startswith(reverse("login"))
    assert _state(world) == before  # nothing changed


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["approve", "deny", "revoke", "consent", "import"])
def test_data_owner_acts(world, action):
    client = client_for(world["users"][DATA_OWNER])
    url, data = _actions(world)[action]
    before = _state(world)
    response = client.post(url, data)
    assert response.status_code == 302, response.content[:2000]
    assert _state(world) != before


@pytest.mark.django_db
def test_compliance_officer_sees_no_decision_form(world):
    page = client_for(world["users"][COMPLIANCE_OFFICER]).get(PAGES["request"](world)).content.decode()
    assert "Only a data owner can approve or deny" in page
    assert 'name="decision"' not in page
    consent = client_for(world["users"][COMPLIANCE_OFFICER]).get(reverse("datasite:consent")).content.decode()
    assert "Only a data owner can record consent" in consent


@pytest.mark.django_db
def test_forms_need_the_csrf_token(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world["users"][DATA_OWNER])
    url, data = _actions(world)["approve"]
    assert client.post(url, data).status_code == 403
    assert CodeRequest.objects.get(pk=world["pending"].pk).status == "pending"
    for url in (
        PAGES["request"](world),
        version_url("request-version", world["approved"]),
        reverse("datasite:consent"),
    ):
        forms = [f.split("</form>")[0] for f in client.get(url).content.decode().split("<form")[1:]]
        posts = [f for f in forms if 'method="post"' in f]
        assert len(posts) >= 2  # logout + the page's own forms
        assert all("csrfmiddlewaretoken" in f for f in posts), url


# ----------------------------------------------------------------------------- request pages


@pytest.mark.django_db
def test_request_list_pending_first(world):
    page = client_for(world["users"][DATA_OWNER]).get(reverse("datasite:requests")).content.decode()
    waiting, decided = page.split("<h2>Decided</h2>")
    assert "Pick the cube" in waiting and "Stack blocks" not in waiting
    assert "Stack blocks" in decided and "dr-rivera" in waiting and "Pending" in waiting
    assert "Approved" in decided


@pytest.mark.django_db
def test_request_page_shows_code_plan_projection_and_consent(world):
    cr, ds = world["pending"], world["ds"]
    page = client_for(world["users"][DATA_OWNER]).get(PAGES["request"](world)).content.decode()
    assert 'class="highlight"' in page and "chunk_size" in page  # Pygments-highlighted JSON bundle
    assert re.search(r'<span class="[^"]+">"recipe"</span>', page)
    assert cr.code_sha256 in page
    assert f'name="code_sha256" value="{cr.code_sha256}"' in page
    for label in (
        "Rounds",
        "Local steps per round",
        "Batch size",
        "Learning rate",
        "Strategy",
        "FedProx μ",
        "DP ε target",
        "DP δ",
        "Clip norm",
        "Noise multiplier σ",
        "Privacy unit",
        "Frames per episode",
        "Aggregation",
        "Robust aggregation",
        "Sites",
        "Purpose",
    ):
        assert f"<th>{label}</th>" in page, label
    projected = code_requests.projection(cr)[ds.name]
    assert f"<strong>{projected:.3g}</strong> of 20" in page
    view = budget.view(ds)
    assert f"ε = {view.reserved:.3g}" in page  # the approved study's reservation
    split = split_episodes(ds, plan_of(cr))
    covered = len(split.train) + len(split.holdout)
    assert covered == 7  # alice's 4 and bob's 3 episodes; carol has no consent
    assert f"{covered} of 10 ({len(split.train)} for training, {len(split.holdout)} held out" in page
    assert "2 of 3" in page  # contributors
    assert "first version of this study" in page


@pytest.mark.django_db
def test_request_page_diffs_against_previous_versions(world):
    ds, v1 = world["ds"], world["pending"]
    make_request(
        ds, v1.title, study=v1.study, version=2, config={"chunk_size": 20, "dim_model": 64}, rounds=3
    )
    owner = client_for(world["users"][DATA_OWNER])
    page = owner.get(reverse("datasite:request", args=[v1.study])).content.decode()
    assert "version 2 of 2" in page and "Compare v2 with" in page
    assert "v1 code" in page and "v2 code" in page
    assert re.search(r'<span class="gd">-\s+"chunk_size": 10,', page)
    assert re.search(r'<span class="gi">\+\s+"chunk_size": 20,', page)
    assert re.search(r'<span class="gi">\+\s+"rounds": 3,', page)  # the plan diff
    make_request(ds, v1.title, study=v1.study, version=3, config={"chunk_size": 30, "dim_model": 64})
    page = owner.get(reverse("datasite:request", args=[v1.study]) + "?against=1").content.decode()
    assert "v1 code" in page and "v3 code" in page and '<option value="1" selected>' in page
    old = owner.get(version_url("request-version", v1)).content.decode()
    assert "This is an older version" in old and "Superseded" in old


@pytest.mark.django_db
def test_request_page_warns_when_over_budget_and_approval_is_refused(world):
    tight = make_dataset("tiny", epsilon_max=0.5)
    cr = make_request(tight, "Too hungry")
    owner = client_for(world["users"][DATA_OWNER])
    page = owner.get(version_url("request-version", cr)).content.decode()
    assert "over the budget: approval will be refused" in page
    response = owner.post(version_url("decide", cr), decide_data(cr, "approve"), follow=True)
    assert "Not saved" in response.content.decode() and "over its budget" in response.content.decode()
    assert CodeRequest.objects.get(pk=cr.pk).status == "pending"
    assert not LedgerEntry.objects.filter(dataset=tight).exists()


# ----------------------------------------------------------------------------- decisions


@pytest.mark.django_db
def test_approve_pins_and_reserves(world):
    cr, ds, owner = world["pending"], world["ds"], world["users"][DATA_OWNER]
    projected = code_requests.projection(cr)[ds.name]
    response = client_for(owner).post(version_url("decide", cr), decide_data(cr, "approve"), follow=True)
    assert response.status_code == 200
    assert "Approved “Pick the cube” (v1)" in response.content.decode()
    cr.refresh_from_db()
    assert (cr.status, cr.decided_by, cr.code_sha256) == (
        "approved",
        owner,
        bundle_sha256(CodeBundle(**cr.code)),
    )
    reserve = LedgerEntry.objects.get(dataset=ds, study=cr.study, kind="reserve")
    assert reserve.steps == 5 * 2  # local steps × rounds
    assert budget.view(ds).committed == pytest.approx(projected)


@pytest.mark.django_db
def test_deny_requires_a_reason(world):
    cr, owner = world["pending"], client_for(world["users"][DATA_OWNER])
    response = owner.post(version_url("decide", cr), decide_data(cr, "deny", "   "))
    assert response.status_code == 400
    assert "Please give a reason for the denial" in response.content.decode()
    assert CodeRequest.objects.get(pk=cr.pk).status == "pending"
    response = owner.post(
        version_url("decide", cr), decide_data(cr, "deny", "uses wrist camera"), follow=True
    )
    assert "Denied" in response.content.decode()
    cr.refresh_from_db()
    assert (cr.status, cr.reason) == ("denied", "uses wrist camera")
    assert not LedgerEntry.objects.filter(study=cr.study).exists()


@pytest.mark.django_db
def test_approve_with_stale_code_hash_is_refused_and_nothing_saved(world):
    cr, owner = world["pending"], client_for(world["users"][DATA_OWNER])
    page = owner.get(version_url("request-version", cr)).content.decode()
    shown = re.search(r'name="code_sha256" value="([0-9a-f]{64})"', page).group(1)
    new_code = CodeBundle(recipe="act", config={"chunk_size": 99})  # the stored code changes under the page
    CodeRequest.objects.filter(pk=cr.pk).update(
        code=new_code.model_dump(), code_sha256=bundle_sha256(new_code)
    )
    ledger = LedgerEntry.objects.count()
    response = owner.post(
        version_url("decide", cr), decide_data(cr, "approve", code_sha256=shown), follow=True
    )
    assert "the code changed since it was shown to you" in response.content.decode()
    assert CodeRequest.objects.get(pk=cr.pk).status == "pending"
    assert LedgerEntry.objects.count() == ledger
    # a malformed hash is refused by the form
    response = owner.post(version_url("decide", cr), decide_data(cr, "approve", code_sha256="nope"))
    assert response.status_code == 400 and "out of date" in response.content.decode()


@pytest.mark.django_db
def test_deciding_a_superseded_version_points_to_the_new_one(world):
    v1, owner = world["pending"], client_for(world["users"][DATA_OWNER])
    make_request(world["ds"], v1.title, study=v1.study, version=2)
    response = owner.post(version_url("decide", v1), decide_data(v1, "approve"), follow=True)
    text = response.content.decode()
    assert "Not saved" in text and "A newer version (v2)" in text
    assert CodeRequest.objects.get(pk=v1.pk).status == "superseded"
    assert not LedgerEntry.objects.filter(study=v1.study).exists()


@pytest.mark.django_db
def test_revoke(world):
    cr, ds, owner = world["approved"], world["ds"], client_for(world["users"][DATA_OWNER])
    page = owner.get(version_url("request-version", cr)).content.decode()
    assert "Revoke approval" in page
    response = owner.post(version_url("revoke", cr), {"reason": ""})
    assert response.status_code == 400 and "Please give a reason for revoking" in response.content.decode()
    assert CodeRequest.objects.get(pk=cr.pk).status == "approved"
    response = owner.post(version_url("revoke", cr), {"reason": "contract ended"}, follow=True)
    assert "Revoked" in response.content.decode()
    cr.refresh_from_db()
    assert (cr.status, cr.reason) == ("revoked", "contract ended")
    assert LedgerEntry.objects.filter(dataset=ds, study=cr.study, kind="release").exists()
    assert budget.view(ds).committed == 0
    again = owner.post(version_url("revoke", cr), {"reason": "twice"}, follow=True).content.decode()
    assert "only an approved request can be revoked" in again


# ----------------------------------------------------------------------------- consent


@pytest.mark.django_db
def test_consent_page_lists_contributors_with_state_and_history(world):
    record_consent("c-bob", "policy-training", False, "email 2024-05-01")
    page = client_for(world["users"][COMPLIANCE_OFFICER]).get(reverse("datasite:consent")).content.decode()
    for who in ("c-alice", "c-bob", "c-carol"):
        assert f'id="c-{who}"' in page
    bob = page.split('id="c-c-bob"')[1].split("</tr>")[0]
    assert "✗ withdrawn" in bob and "2 records" in bob and "email 2024-05-01" in bob
    carol = page.split('id="c-c-carol"')[1].split("</tr>")[0]
    assert "no record" in carol and "lab-a (3 episodes)" in carol


@pytest.mark.django_db
def test_consent_form_withdraws_and_gives(world):
    owner = world["users"][DATA_OWNER]
    client = client_for(owner)
    data = {"contributor": "c-alice", "purpose": "policy-training", "given": "false", "evidence": "letter 17"}
    response = client.post(reverse("datasite:consent-record"), data, follow=True)
    assert "Consent withdrawn for c-alice (policy-training)" in response.content.decode()
    event = ConsentEvent.objects.latest("id")
    assert (event.contributor, event.given, event.evidence, event.recorded_by) == (
        "c-alice",
        False,
        "letter 17",
        owner,
    )
    assert "c-alice" not in consenting("policy-training")
    client.post(reverse("datasite:consent-record"), {**data, "given": "true", "purpose": "evaluation"})
    assert "c-alice" in consenting("evaluation")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"evidence": ""}, "Give an evidence reference"),
        ({"purpose": "Policy Training"}, "A purpose is lower-case words"),
        ({"given": ""}, "Say whether consent is given or withdrawn"),
        ({"contributor": "c-nobody"}, "Unknown contributor"),
    ],
)
def test_consent_form_errors_save_nothing(world, change, message):
    data = {
        "contributor": "c-alice",
        "purpose": "policy-training",
        "given": "false",
        "evidence": "x",
        **change,
    }
    before = ConsentEvent.objects.count()
    response = client_for(world["users"][DATA_OWNER]).post(reverse("datasite:consent-record"), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert ConsentEvent.objects.count() == before


@pytest.mark.django_db
def test_consent_form_accepts_a_new_contributor_when_ticked(world):
    data = {
        "contributor": "c-dave",
        "purpose": "policy-training",
        "given": "true",
        "evidence": "form 3",
        "new_contributor": "on",
    }
    assert (
        client_for(world["users"][DATA_OWNER]).post(reverse("datasite:consent-record"), data).status_code
        == 302
    )
    assert "c-dave" in consenting("policy-training")


@pytest.mark.django_db
def test_consent_csv_import(world):
    text = (
        "contributor,purpose,given,evidence\r\n"
        "c-carol,policy-training,yes,form 5\r\n"
        "c-alice,policy-training,false,letter 9\r\n"
        "c-bob,evaluation,true,form 6\r\n"
    )
    response = client_for(world["users"][DATA_OWNER]).post(
        reverse("datasite:consent-import"), {"file": csv_file(text)}, follow=True
    )
    assert "Imported 3 consent records (2 given, 1 withdrawn)" in response.content.decode()
    assert consenting("policy-training") == {"c-bob", "c-carol"}
    assert consenting("evaluation") == {"c-bob"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "contributor,purpose,given,evidence\nc-carol,policy-training,yes,f\nc-alice,Bad Purpose,no,f\n",
            "Line 3: purpose &#x27;Bad Purpose&#x27; must be lower-case",
        ),
        (
            "contributor,purpose,given,evidence\nc-carol,policy-training,maybe,f\n",
            "Line 2: given must be true or false",
        ),
        ("contributor,purpose,given,evidence\nc-carol,policy-training,yes,\n", "Line 2: evidence is empty"),
        ("contributor,purpose,given,evidence\nc-zed,policy-training,yes,f\n", "Line 2: unknown contributor"),
        (
            "contributor,purpose,given,evidence\nc-carol,policy-training,yes,f\nc-carol,policy-training,no,g\n",
            "Line 3: c-carol / policy-training already appears on line 2",
        ),
        ("contributor,purpose,given,evidence\nc-carol,policy-training,yes\n", "Line 2: expected 4 columns"),
        ("who,purpose,given,evidence\nc-carol,policy-training,yes,f\n", "Line 1: the header must be exactly"),
        ("contributor,purpose,given,evidence\n", "no rows"),
    ],
)
def test_consent_csv_bad_line_saves_nothing(world, text, message):
    before = ConsentEvent.objects.count()
    response = client_for(world["users"][DATA_OWNER]).post(
        reverse("datasite:consent-import"), {"file": csv_file(text)}
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    assert ConsentEvent.objects.count() == before


@pytest.mark.django_db
def test_consent_csv_not_utf8(world):
    upload = SimpleUploadedFile(
        "c.csv", "contributor,purpose,given,evidence\nc-ü,p,yes,f\n".encode("latin-1")
    )
    response = client_for(world["users"][DATA_OWNER]).post(
        reverse("datasite:consent-import"), {"file": upload}
    )
    assert response.status_code == 400 and "not UTF-8" in response.content.decode()


# ----------------------------------------------------------------------------- datasets and plots


@pytest.mark.django_db
def test_dataset_pages(world):
    client = client_for(world["users"][DATA_OWNER])
    listing = client.get(reverse("datasite:datasets")).content.decode()
    assert "lab-a" in listing and "max 20" in listing
    page = client.get(PAGES["dataset"](world)).content.decode()
    for text in (
        "observation.state",
        "shoulder_pan.pos",
        "float32",
        "32 × 40 × 3",
        "(added by LeRobot)",
        "10</span> episodes",
        "3</span> contributors",
        "Synthetic preview",
        "7 of 10",
        "2 of 3",
    ):
        assert text in page, text
    assert reverse("datasite:dataset-epsilon", args=["lab-a"]) in page
    assert reverse("datasite:dataset-mock", args=["lab-a"]) in page
    assert "mock-images.png" not in page  # the mock keeps image shapes only
    assert client.get(reverse("datasite:dataset", args=["nope"])).status_code == 404


@pytest.mark.django_db
def test_plots_return_png(world):
    ds, study = world["ds"], world["approved"].study
    reserve = LedgerEntry.objects.get(dataset=ds, kind="reserve")
    LedgerEntry.objects.create(
        dataset=ds,
        study=study,
        round=1,
        kind="charge",
        noise_multiplier=reserve.noise_multiplier,
        sample_rate=reserve.sample_rate,
        steps=5,
        unit="episode",
    )
    client = client_for(world["users"][COMPLIANCE_OFFICER])
    for page in ("dataset-epsilon", "dataset-mock"):
        response = client.get(PAGES[page](world))
        assert response["Content-Type"] == "image/png" and response.content.startswith(PNG), page
    assert client.get(reverse("datasite:dataset-mock-images", args=[ds.name])).status_code == 404
    empty = make_dataset("empty")
    assert client.get(reverse("datasite:dataset-epsilon", args=[empty.name])).content.startswith(PNG)


def test_epsilon_timeline_composes_never_adds():
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2025, 1, 1, tzinfo=UTC)

    def entry(i: int, kind: str, study: str, steps: int) -> Entry:
        mechanism = None if kind == "release" else Mechanism(1.5, 0.25, steps)
        return Entry(kind, study, mechanism, at=t0 + timedelta(hours=i))

    m = Mechanism(1.5, 0.25, 5)
    entries = [
        entry(0, "reserve", "a", 10),
        entry(1, "charge", "a", 5),
        entry(2, "charge", "a", 5),
        entry(3, "reserve", "b", 10),
        entry(4, "release", "b", 0),
    ]
    points = Ledger(10.0, 1e-5, entries).timeline()
    assert [p.spent for p in points[:3]] == pytest.approx([0.0, epsilon([m], 1e-5), epsilon([m, m], 1e-5)])
    assert points[2].spent < 2 * epsilon([m], 1e-5)  # composition is tighter than adding
    assert points[0].committed == pytest.approx(epsilon([m, m], 1e-5))
    assert points[3].committed == pytest.approx(epsilon([m] * 4, 1e-5))
    assert points[4].committed == pytest.approx(points[4].spent)  # b's reservation released
    assert epsilon_png(points, 10.0, "t").startswith(PNG)
    assert epsilon_png([], 10.0).startswith(PNG)


def test_mock_images_render_when_the_mock_has_arrays():
    import numpy as np

    frame = {
        "observation.images.top": np.zeros((8, 10, 3), dtype=np.uint8).tolist(),
        "observation.state": [0.0] * 6,
        "action": [1.0] * 6,
    }
    mock = {"cameras": {"observation.images.top": {}}, "frames": [frame, frame]}
    assert plots.mock_image_keys(mock) == ["observation.images.top"]
    assert plots.mock_images_png(mock).startswith(PNG)
    assert plots.mock_images_png({"cameras": {"observation.images.top": {}}, "frames": [{}]}) is None
    assert plots.mock_curves_png(mock).startswith(PNG)
    assert plots.mock_curves_png({}).startswith(PNG)


def test_module_bundles_are_shown_as_python():
    text, lexer = code_text({"kind": "module", "source": "def train(batch):\n    return batch\n"})
    assert text.startswith("def train") and lexer.name == "Python"
    text, lexer = code_text({"kind": "recipe", "recipe": "act", "config": {"b": 1, "a": 2}})
    assert text.index('"a"') < text.index('"b"') and lexer.name == "JSON"
