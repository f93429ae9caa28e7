"""A node is a folder: its config, secret key, long-term keys, data and (by default) database.

Layout::

    node.json           role, name, public URL, database URL (if not SQLite), peers
    secret_key          Django secret key (0600)
    keys/signing.pem    Ed25519 long-term signing key (0600); it may live outside the folder
                        instead (``signing_key_file``, the setting ``FEDSILO_SIGNING_KEY_FILE``)
    keys/kex.pem        X25519 long-term key-agreement key (0600)
    data/               the site's datasets and artefacts
    db.sqlite3          the default database

This module must not import Django: settings import it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.files import atomic_write

ROLES = ("datasite", "orchestrator")
CONFIG_FILE = "node.json"


class NodeError(Exception):
    """A node folder is missing, malformed or cannot be created; the message says what to do."""


@dataclass(frozen=True)
class NodeConfig:
    """The parsed content of a node folder."""

    dir: Path
    role: str
    name: str
    public_url: str
    database_url: str = ""
    signing_key_file: Path | None = None  # None: keys/signing.pem in the folder

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def host(self) -> str:
        return urlsplit(self.public_url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.public_url).port or (443 if self.public_url.startswith("https") else 80)

    def secret_key(self) -> str:
        return (self.dir / "secret_key").read_text().strip()

    def signing_key(self) -> Ed25519PrivateKey:
        path = self.signing_key_file or self.dir / "keys/signing.pem"
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        assert isinstance(key, Ed25519PrivateKey)
        return key

    def kex_key(self) -> X25519PrivateKey:
        key = serialization.load_pem_private_key((self.dir / "keys/kex.pem").read_bytes(), None)
        assert isinstance(key, X25519PrivateKey)
        return key

    def public_keys(self) -> dict[str, str]:
        """Base64 raw public keys, as exchanged with peers."""
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        return {
            "signing_key": base64.b64encode(self.signing_key().public_key().public_bytes(*raw)).decode(),
            "kex_key": base64.b64encode(self.kex_key().public_key().public_bytes(*raw)).decode(),
        }


def load_node(
    node_dir: str | os.PathLike | None, signing_key_file: str | os.PathLike | None = None
) -> NodeConfig | None:
    """Read a node folder, or return None when no folder is given.

    ``signing_key_file``: the node's signing key kept outside the folder (so that whoever can
    change the folder's database cannot also re-sign its audit log with the folder's key).
    """
    if not node_dir:
        return None
    path = Path(node_dir).resolve()
    config = path / CONFIG_FILE
    if not config.is_file():
        raise NodeError(
            f"{path} is not a fedsilo node (no {CONFIG_FILE}); "
            "create one with: python manage.py init_node --role ROLE --name NAME --dir DIR"
        )
    key_file = Path(signing_key_file).resolve() if signing_key_file else None
    if key_file is not None and not key_file.is_file():
        raise NodeError(f"signing key file {key_file} does not exist (FEDSILO_SIGNING_KEY_FILE)")
    data = json.loads(config.read_text())
    return NodeConfig(
        dir=path,
        role=data["role"],
        name=data["name"],
        public_url=data["public_url"],
        database_url=data.get("database_url", ""),
        signing_key_file=key_file,
    )


def create_node(node_dir: Path, role: str, name: str, public_url: str, database_url: str = "") -> NodeConfig:
    """Create a node folder with fresh secrets. Raises NodeError and leaves nothing behind."""
    if role not in ROLES:
        raise NodeError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise NodeError(f"invalid node name {name!r}: use letters, digits, '-' and '_'")
    scheme = urlsplit(public_url).scheme
    if scheme not in ("http", "https") or not urlsplit(public_url).hostname:
        raise NodeError(f"invalid public URL {public_url!r}: give e.g. https://site-a.example.org")
    node_dir = node_dir.resolve()
    if node_dir.exists() and any(node_dir.iterdir()):
        raise NodeError(f"{node_dir} already exists and is not empty: choose a new --dir")
    parent = node_dir.parent
    if not parent.is_dir():
        raise NodeError(f"parent folder {parent} does not exist: create it first")
    if not os.access(parent, os.W_OK):
        raise NodeError(f"cannot write to {parent}: choose a folder you own")
    created_dir = not node_dir.exists()
    try:
        node_dir.mkdir(mode=0o700, exist_ok=True)
        node_dir.chmod(0o700)
        (node_dir / "keys").mkdir(mode=0o700)
        (node_dir / "data").mkdir(mode=0o700)
        _write_private(node_dir / "secret_key", secrets.token_urlsafe(64) + "\n")
        pem = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
        for fname, key in (
            ("signing.pem", Ed25519PrivateKey.generate()),
            ("kex.pem", X25519PrivateKey.generate()),
        ):
            _write_private(
                node_dir / "keys" / fname,
                key.private_bytes(*pem, serialization.NoEncryption()).decode(),
            )
        config = {"role": role, "name": name, "public_url": public_url.rstrip("/")}
        if database_url:
            config["database_url"] = database_url
        _write_private(node_dir / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    except OSError as exc:
        remove_node_dir(node_dir, created_dir)
        raise NodeError(f"cannot create node in {node_dir}: {exc.strerror}") from exc
    return load_node(node_dir)  # type: ignore[return-value]


def remove_node_dir(node_dir: Path, remove_root: bool = True) -> None:
    """Undo a half-made node folder."""
    if remove_root:
        shutil.rmtree(node_dir, ignore_errors=True)
    else:
        for child in node_dir.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically."""
    atomic_write(path, text.encode(), private=True)
