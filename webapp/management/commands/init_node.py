"""``manage.py init_node``: create a self-contained node folder and its database."""

import os
import subprocess
import sys
from pathlib import Path

import dj_database_url
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from common.node import ROLES, NodeError, create_node, remove_node_dir


def check_database(url: str) -> None:
    """Connect once to a database URL; raise CommandError saying what is wrong."""
    try:
        config = dj_database_url.parse(url)
    except ValueError as exc:
        raise CommandError(f"invalid DATABASE_URL: {exc}") from exc
    if config["ENGINE"] == "django.db.backends.sqlite3":
        return
    if config["ENGINE"] != "django.db.backends.postgresql":
        raise CommandError("DATABASE_URL must be postgresql://… or sqlite:///… ")
    import psycopg

    try:
        psycopg.connect(
            dbname=config["NAME"],
            user=config["USER"] or None,
            password=config["PASSWORD"] or None,
            host=config["HOST"] or None,
            port=config["PORT"] or None,
            connect_timeout=5,
        ).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CommandError(
            f"cannot connect to the database at {config['HOST'] or 'localhost'}:"
            f"{config['PORT'] or 5432}/{config['NAME']}: {first}. "
            "Check that PostgreSQL runs and the URL is right."
        ) from exc


class Command(BaseCommand):
    help = "Create a node folder: config, secret key, signing and key-agreement keys, data, database."

    def add_arguments(self, parser):
        parser.add_argument("--role", required=True, help=f"one of: {', '.join(ROLES)}")
        parser.add_argument("--name", required=True, help="node name, e.g. site-a")
        parser.add_argument("--dir", required=True, type=Path, help="new (or empty) folder")
        parser.add_argument("--url", default="", help="public URL peers use (default http://127.0.0.1:PORT)")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--database-url",
            default=os.environ.get("DATABASE_URL", ""),
            help="PostgreSQL URL (default: $DATABASE_URL, else SQLite in the folder)",
        )

    def handle(self, *args, role, name, dir, url, port, database_url, **options):
        if role not in ROLES:
            raise CommandError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
        if database_url:
            check_database(database_url)
        node_dir: Path = dir.resolve()
        existed = node_dir.exists()
        try:
            node = create_node(node_dir, role, name, url or f"http://127.0.0.1:{port}", database_url)
        except NodeError as exc:
            raise CommandError(str(exc)) from exc
        env = {**os.environ, "FEDSILO_NODE_DIR": str(node.dir)}
        env.pop("DATABASE_URL", None)  # the node folder now names its database
        result = subprocess.run(
            [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "migrate", "--noinput"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            remove_node_dir(node.dir, remove_root=not existed)
            tail = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise CommandError(f"could not create the node's database: {tail}")
        self.stdout.write(self.style.SUCCESS(f"created {role} node {name!r} in {node.dir}"))
        self.stdout.write(f"serve it with: python manage.py runnode --dir {node.dir}")
