"""A node is a folder: creation, secrets, keys, and refusal of bad input."""

import json
import os
import stat
import subprocess
import sys

import pytest

from common.node import NodeError, create_node, load_node

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def manage(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("FEDSILO_NODE_DIR", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "manage.py"), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def test_create_node_writes_private_secrets_and_distinct_keys(tmp_path):
    node = create_node(tmp_path / "n", "datasite", "site-a", "http://127.0.0.1:9000")
    assert stat.S_IMODE((tmp_path / "n").stat().st_mode) == 0o700
    for rel in ("secret_key", "keys/signing.pem", "keys/kex.pem", "node.json"):
        assert stat.S_IMODE((node.dir / rel).stat().st_mode) == 0o600, rel
    assert len(node.secret_key()) >= 50
    keys = node.public_keys()
    assert keys["signing_key"] != keys["kex_key"]
    other = create_node(tmp_path / "m", "datasite", "site-b", "http://127.0.0.1:9001")
    assert other.secret_key() != node.secret_key()
    assert other.public_keys() != keys
    assert load_node(node.dir) == node
    assert json.loads((node.dir / "node.json").read_text())["role"] == "datasite"


@pytest.mark.parametrize(
    ("role", "name", "url", "message"),
    [
        ("bogus", "a", "http://h", "unknown role"),
        ("datasite", "bad name!", "http://h", "invalid node name"),
        ("datasite", "a", "ftp://h", "invalid public URL"),
    ],
)
def test_create_node_rejects_bad_input_and_leaves_nothing(tmp_path, role, name, url, message):
    with pytest.raises(NodeError, match=message):
        create_node(tmp_path / "n", role, name, url)
    assert not (tmp_path / "n").exists()


def test_load_node_on_a_plain_folder_says_how_to_make_one(tmp_path):
    with pytest.raises(NodeError, match="init_node"):
        load_node(tmp_path)


def test_init_node_creates_a_migrated_database(tmp_path):
    result = manage("init_node", "--role", "orchestrator", "--name", "orch", "--dir", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "db.sqlite3").stat().st_size > 0
    groups = manage(
        "shell",
        "-v",
        "0",
        "-c",
        "from django.contrib.auth.models import Group;"
        "print(sorted(Group.objects.values_list('name', flat=True)))",
        env={"FEDSILO_NODE_DIR": str(tmp_path / "o")},
    )
    assert "data_owner" in groups.stdout and "compliance_officer" in groups.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "bogus", "--name", "x"], "unknown role 'bogus'"),
        (
            ["--role", "datasite", "--name", "x", "--database-url", "postgresql://postgres@127.0.0.1:1/test"],
            "cannot connect to the database",
        ),
        (["--role", "datasite", "--name", "x", "--database-url", "mysql://x@h/d"], "must be postgresql"),
    ],
)
def test_init_node_bad_input_is_one_clear_line_and_nothing_created(tmp_path, args, message):
    result = manage("init_node", *args, "--dir", str(tmp_path / "n"))
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "n").exists()


def test_init_node_refuses_an_existing_node_folder(tmp_path):
    made = manage("init_node", "--role", "datasite", "--name", "a", "--dir", str(tmp_path / "n"))
    assert made.returncode == 0
    before = (tmp_path / "n" / "secret_key").read_text()
    result = manage("init_node", "--role", "datasite", "--name", "b", "--dir", str(tmp_path / "n"))
    assert result.returncode != 0 and "already exists" in result.stderr
    assert (tmp_path / "n" / "secret_key").read_text() == before


def test_init_node_refuses_a_missing_or_unwritable_parent(tmp_path):
    result = manage("init_node", "--role", "datasite", "--name", "a", "--dir", str(tmp_path / "no" / "n"))
    assert result.returncode != 0 and "does not exist" in result.stderr
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere; the unwritable case needs a normal user")
    result = manage("init_node", "--role", "datasite", "--name", "a", "--dir", str(locked / "n"))
    assert result.returncode != 0 and "cannot write" in result.stderr


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    made = manage(
        "init_node",
        "--role",
        "datasite",
        "--name",
        "prod",
        "--dir",
        str(tmp_path / "p"),
        "--url",
        "https://site.example.org",
    )
    assert made.returncode == 0, made.stderr
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", env={"FEDSILO_NODE_DIR": str(tmp_path / "p")}
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout
