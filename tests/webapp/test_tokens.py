"""API tokens: hashed at rest, expiring, revocable; roles gate endpoints."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from common.models import ApiToken

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


@pytest.fixture
def alice():
    user = User.objects.create_user("alice")
    user.groups.add(Group.objects.get(name="researcher"))
    return user


def test_token_is_stored_hashed_and_authenticates(alice):
    token, raw = ApiToken.issue(alice, "laptop")
    stored = ApiToken.objects.get(pk=token.pk)
    assert raw not in (stored.digest, stored.key) and raw.split("_")[2] not in stored.digest
    assert ApiToken.authenticate(raw).user == alice
    assert ApiToken.authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
    assert ApiToken.authenticate("garbage") is None


def test_expired_and_revoked_tokens_are_refused(alice, client):
    token, raw = ApiToken.issue(alice, "short")
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert ApiToken.authenticate(raw) is None
    assert client.get("/api/node", HTTP_AUTHORIZATION=f"Bearer {raw}").status_code == 401
    token2, raw2 = ApiToken.issue(alice, "other")
    assert ApiToken.authenticate(raw2) is not None
    token2.revoke()
    assert ApiToken.authenticate(raw2) is None


def test_inactive_user_token_is_refused(alice):
    _, raw = ApiToken.issue(alice, "x")
    alice.is_active = False
    alice.save()
    assert ApiToken.authenticate(raw) is None


def test_api_with_token_identifies_the_caller(alice, client, settings, tmp_path):
    from common.node import create_node

    node = create_node(tmp_path / "n", "datasite", "site-z", "http://127.0.0.1:9")
    settings.NODE_DIR = node.dir
    _, raw = ApiToken.issue(alice, "x")
    body = client.get("/api/node", HTTP_AUTHORIZATION=f"Bearer {raw}").json()
    assert body["user"] == "alice" and body["roles"] == ["researcher"]
    assert body["node"]["name"] == "site-z"
    assert client.get("/api/node", HTTP_AUTHORIZATION="Basic abc").status_code == 401


def test_session_login_does_not_open_the_api(alice, client):
    alice.set_password("correct horse battery staple")
    alice.save()
    assert client.login(username="alice", password="correct horse battery staple")
    assert client.get("/api/node").status_code == 401
    assert client.get("/").status_code == 200


def test_token_command_issue_list_revoke(alice, capsys):
    call_command("token", "issue", "--user", "alice", "--name", "ci", "--days", "1")
    raw = capsys.readouterr().out.strip()
    assert ApiToken.authenticate(raw) is not None
    call_command("token", "revoke", raw.split("_")[1])
    assert ApiToken.authenticate(raw) is None
    with pytest.raises(CommandError, match="no user"):
        call_command("token", "issue", "--user", "nobody")


def test_create_user_assigns_roles_and_rejects_unknown(monkeypatch):
    monkeypatch.setenv("PW", "a-very-long-passphrase-42")
    call_command(
        "create_user",
        "--username",
        "dora",
        "--role",
        "data_owner",
        "--role",
        "compliance_officer",
        "--password-env",
        "PW",
    )
    user = User.objects.get(username="dora")
    assert set(user.groups.values_list("name", flat=True)) == {"data_owner", "compliance_officer"}
    assert user.check_password("a-very-long-passphrase-42")
    with pytest.raises(CommandError, match="unknown role"):
        call_command("create_user", "--username", "eve", "--role", "admin", "--no-password")
    with pytest.raises(CommandError, match="weak password"):
        monkeypatch.setenv("PW2", "123")
        call_command("create_user", "--username", "eve", "--role", "researcher", "--password-env", "PW2")
    assert not User.objects.filter(username="eve").exists()
