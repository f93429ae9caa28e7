"""The researcher's pages at the orchestrator: roles × views, a study's rounds and plots, the
session-authenticated model download, and the federation page's stale heartbeats."""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent
from common.protocol import DPPlan, Plan
from common.roles import COMPLIANCE_OFFICER, DATA_OWNER, NODE_ADMIN, PEER_NODE, RESEARCHER
from orchestrator import checkpoints, plots
from orchestrator.models import Datasite, Round, Study, StudySite
from privacy.strategies import ServerState

pytestmark = pytest.mark.django_db
PNG = b"\x89PNG\r\n\x1a\n"
WEIGHTS = {"head.weight": np.arange(12, dtype=np.float32).reshape(4, 3), "head.bias": np.zeros(4, np.float32)}


def make_user(username: str, *roles: str) -> User:
    user = User.objects.create_user(username)
    for role in roles:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


def client_for(user: User | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def site_metrics(loss: float, heldout: float, eps: float, dataset: str = "lab-a") -> dict:
    return {
        "loss_before": loss + 0.3,
        "loss_after": loss,
        "heldout_loss": heldout,
        "holdout_episodes": 2,
        "epsilon_spent": eps,
        "dataset": dataset,
    }


def make_site(name: str, status: str = "joined", beat_age: float | None = 1.0) -> Datasite:
    beat = None if beat_age is None else timezone.now() - timedelta(seconds=beat_age)
    return Datasite.objects.create(
        name=name,
        account=make_user(f"node.{name}", PEER_NODE),
        status=status,
        url=f"http://127.0.0.1:91{len(name)}" if status == "joined" else "",
        last_heartbeat=beat,
        joined_at=timezone.now() - timedelta(hours=1) if status == "joined" else None,
    )


def make_study(researcher: User, title: str = "Pick the cube", rounds: int = 3, **fields) -> Study:
    plan = Plan(rounds=rounds, local_steps=5, batch_size=2, dp=DPPlan(noise_multiplier=1.5)).model_dump()
    return Study.objects.create(
        title=title,
        researcher=researcher,
        code={"recipe": "act", "config": {}},
        code_sha256="c" * 64,
        plan=plan,
        plan_sha256="d" * 64,
        **fields,
    )


@pytest.fixture(autouse=True)
def orchestrator_node(settings, tmp_path):
    settings.ROLE = "orchestrator"
    settings.ROOT_URLCONF = "webapp.urls_orchestrator"
    settings.DATA_DIR = tmp_path
    settings.FEDSILO_HEARTBEAT_SECONDS = 10


@pytest.fixture
def world() -> dict:
    """Two researchers, a node admin, three sites; Rita's study in its third round of three."""
    users = {
        "rita": make_user("rita", RESEARCHER),
        "rob": make_user("rob", RESEARCHER),
        NODE_ADMIN: make_user("nina", NODE_ADMIN),
        COMPLIANCE_OFFICER: make_user("carl", COMPLIANCE_OFFICER),
        DATA_OWNER: make_user("olga", DATA_OWNER),
        "none": make_user("nobody"),
    }
    a, b = make_site("site-a", beat_age=5), make_site("site-b", beat_age=31)
    make_site("site-c", status="invited", beat_age=None)
    study = make_study(users["rita"], status="running", current_round=3, phase="train")
    StudySite.objects.create(
        study=study, datasite=a, dataset="lab-a", status="approved", projected_epsilon=2.5
    )
    StudySite.objects.create(
        study=study, datasite=b, dataset="lab-b", status="denied", reason="the top camera films faces"
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
                "num_examples": {"site-a": 40},
            },
        )
    Round.objects.create(study=study, number=3, participants=["site-a"], deadline=deadline)
    checkpoints.save(study.pk, 2, WEIGHTS, ServerState(strategy="fedavg"))
    other = make_study(users["rob"], title="Rob's drawer", status="awaiting_approval", phase="approval")
    return {"users": users, "study": study, "other": other}


# ----------------------------------------------------------------------------- roles × views

STUDY_PAGES = ("study", "study-loss", "study-epsilon", "study-model")


def url(name: str, study: Study | None = None) -> str:
    return reverse(f"orchestrator:{name}", args=[study.pk] if study is not None else [])


@pytest.mark.parametrize(
    ("who", "lists", "own_study", "federation"),
    [
        ("rita", 200, 200, 200),  # the study's researcher
        (NODE_ADMIN, 200, 200, 200),  # every study
        ("rob", 200, 404, 200),  # another researcher: Rita's study does not exist for him
        (COMPLIANCE_OFFICER, 403, 403, 403),
        (DATA_OWNER, 403, 403, 403),
        ("none", 403, 403, 403),
        (None, 302, 302, 302),
    ],
)
def test_pages_by_role(world, who, lists, own_study, federation):
    client = client_for(world["users"][who] if who else None)
    expected = {url("studies"): lists, url("federation"): federation}
    expected |= {url(name, world["study"]): own_study for name in STUDY_PAGES}
    for link, status in expected.items():
        response = client.get(link)
        assert response.status_code == status, (who, link, response.status_code)
        if who is None:
            assert response["Location"].startswith(reverse("login")), link
        elif status == 200:
            assert client.post(link).status_code == 405, link  # pages to read only


def test_pages_for_an_unknown_study_are_404(world):
    client = client_for(world["users"][NODE_ADMIN])
    for name in STUDY_PAGES:
        assert client.get(reverse(f"orchestrator:{name}", args=["0" * 32])).status_code == 404, name


def test_researcher_lists_own_studies_admin_all(world):
    mine = client_for(world["users"]["rita"]).get(url("studies")).content.decode()
    assert "Pick the cube" in mine and "Rob&#x27;s drawer" not in mine
    assert url("study", world["study"]) in mine and "3 / 3" in mine and "1 of 2" in mine
    everything = client_for(world["users"][NODE_ADMIN]).get(url("studies")).content.decode()
    assert "Pick the cube" in everything and "Rob&#x27;s drawer" in everything and ">rob<" in everything


def test_home_links_researchers_to_studies_and_federation(world):
    home = client_for(world["users"]["rita"]).get(reverse("home")).content.decode()
    assert f'href="{url("studies")}"' in home and f'href="{url("federation")}"' in home
    assert 'href="/compliance/audit/"' not in home
    officer = client_for(world["users"][COMPLIANCE_OFFICER]).get(reverse("home")).content.decode()
    assert 'href="/compliance/audit/"' in officer and f'href="{url("studies")}"' not in officer


# ----------------------------------------------------------------------------- the study page


def test_study_page_shows_status_round_sites_and_rounds(world):
    study = world["study"]
    page = client_for(world["users"]["rita"]).get(url("study", study)).content.decode()
    assert re.search(r'id="study-status">Running<', page)
    assert re.search(r'id="study-round"><span class="num">3 / 3</span>', page)
    assert '<span class="num">train</span> phase' in page and '<span class="num">2</span> rounds done' in page
    # sites: decision, reason, projected ε
    assert re.search(
        r"<td>site-a</td><td>lab-a</td>\s*<td><span class=\"status status-approved\">approved", page
    )
    assert "the top camera films faces" in page and "<td>2.5</td>" in page
    # rounds: per-site loss, held-out loss, ε per site/dataset
    assert (
        "<th>site-a loss</th>" in page
        and "<th>ε site-a/lab-a</th>" in page
        and "site-b/lab-b" not in page  # denied: no column
    )
    assert '<td class="num">0.9000</td>' in page and '<td class="num">1.1000</td>' in page
    assert '<td class="num">1.3</td>' in page
    assert url("study-loss", study) in page and url("study-epsilon", study) in page
    assert f'href="{url("study-model", study)}"' in page
    assert "c" * 64 in page and "σ = 1.5" in page


def test_study_page_before_any_round(world):
    page = client_for(world["users"]["rob"]).get(url("study", world["other"])).content.decode()
    assert "No round has started yet." in page and "No model yet" in page
    assert re.search(r'id="study-round"><span class="num">0 / 3</span>', page)
    assert url("study-loss", world["other"]) not in page and url("study-model", world["other"]) not in page


def test_failed_and_evaluating_studies_say_so(world):
    study = world["study"]
    client = client_for(world["users"]["rita"])
    Study.objects.filter(pk=study.pk).update(current_round=4, phase="evaluate")
    page = client.get(url("study", study)).content.decode()
    assert "evaluating the final model" in page and "3 / 3" in page
    Study.objects.filter(pk=study.pk).update(status="failed", error="round 3: 0 site(s) answered, 1 needed")
    assert (
        "The study failed:</strong> round 3: 0 site(s) answered"
        in client.get(url("study", study)).content.decode()
    )


def test_plots_are_png(world):
    client = client_for(world["users"]["rita"])
    for name in ("study-loss", "study-epsilon"):
        response = client.get(url(name, world["study"]))
        assert response["Content-Type"] == "image/png" and response.content.startswith(PNG), name
        assert response["Cache-Control"] == "private, no-store"
    empty = client_for(world["users"]["rob"])
    for name in ("study-loss", "study-epsilon"):  # no round yet: a PNG that says so
        assert empty.get(url(name, world["other"])).content.startswith(PNG), name


def test_model_download_is_the_checkpoint_and_audited(world):
    study = world["study"]
    response = client_for(world["users"]["rita"]).get(url("study-model", study))
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{study.pk}.safetensors"'
    body = b"".join(response.streaming_content)
    assert body == checkpoints.weights_bytes(study.pk, 2)  # the last finished training round
    event = AuditEvent.objects.get(action="model.downloaded")
    assert (event.actor, event.target) == ("rita", f"study:{study.pk}")
    assert event.data == {"file": "round-00002.safetensors", "bytes": len(body), "via": "web"}
    assert client_for(world["users"]["rob"]).get(url("study-model", world["other"])).status_code == 404
    assert AuditEvent.objects.filter(action="model.downloaded").count() == 1


# ----------------------------------------------------------------------------- plots


def test_loss_series_places_heldout_at_the_model_it_evaluated():
    rounds = [
        {
            "round": 1,
            "eval_only": False,
            "sites": {"a": {"loss_after": 0.9}, "b": {"loss_after": None}},
            "heldout_loss": 1.4,
        },
        {
            "round": 2,
            "eval_only": False,
            "sites": {"a": {"loss_after": float("nan")}, "b": {"loss_after": 0.5}},
            "heldout_loss": None,
        },
        {"round": 3, "eval_only": True, "sites": {"a": {"loss_after": 0.1}}, "heldout_loss": 1.0},
    ]
    sites, heldout = plots.loss_series(rounds)
    assert sites == {"a": [(1, 0.9)], "b": [(2, 0.5)]}  # missing, NaN and evaluation rounds left out
    assert heldout == [(0, 1.4), (2, 1.0)]  # round r reports the model after round r - 1
    assert plots.loss_png(rounds).startswith(PNG) and plots.loss_png([]).startswith(PNG)


def test_epsilon_series_keeps_infinity_and_skips_missing():
    rounds = [
        {"round": 1, "eval_only": False, "epsilon": {"a/x": 0.5, "b/y": float("inf"), "c/z": None}},
        {"round": 2, "eval_only": False, "epsilon": {"a/x": 0.9, "b/y": "n/a"}},
        {"round": 3, "eval_only": True, "epsilon": {"a/x": 5.0}},
    ]
    assert plots.epsilon_series(rounds) == {"a/x": [(1, 0.5), (2, 0.9)], "b/y": [(1, None)]}
    assert plots.epsilon_png(rounds, {"a/x": 2.0, "b/y": None}).startswith(PNG)
    assert plots.epsilon_png([]).startswith(PNG)


# ----------------------------------------------------------------------------- federation


def test_federation_page_flags_stale_heartbeats(world, settings):
    client = client_for(world["users"]["rita"])
    page = client.get(url("federation")).content.decode()
    assert "every 10 s" in page and "more than 30 s" in page
    rows = {m[0]: m[1] for m in re.findall(r'<tr id="site-([\w-]+)"( class="stale")?>', page)}
    assert rows == {"site-a": "", "site-b": ' class="stale"', "site-c": ""}  # invited: no heartbeat due
    assert re.search(r'<td class="age">(5|6) s</td>', page)  # site-a's age in seconds
    assert re.search(r'<td class="age">3[12] s</td>', page)
    assert "http://127.0.0.1:916" in page and "never" in page
    assert "<strong>1</strong> joined site did not send a heartbeat in time" in page
    settings.FEDSILO_HEARTBEAT_SECONDS = 20  # 31 s is within three beats of 20 s
    page = client.get(url("federation")).content.decode()
    assert 'class="stale"' not in page and "more than 60 s" in page
    Datasite.objects.filter(name="site-a").update(last_heartbeat=None)  # joined, never heard from
    assert '<tr id="site-site-a" class="stale">' in client.get(url("federation")).content.decode()
