"""fedsilo settings: one code base; the node folder and the environment decide the rest.

A node is a folder made by ``manage.py init_node``. ``FEDSILO_NODE_DIR`` points at it;
``DATABASE_URL`` and ``CELERY_BROKER_URL`` override what the folder says. Without a node
folder (tests, one-off commands) the role comes from ``FEDSILO_ROLE`` and the secret key
from ``DJANGO_SECRET_KEY`` or a random one for the life of the process.
"""

import os
import secrets
from pathlib import Path

import dj_database_url

from common.node import NodeConfig, load_node

BASE_DIR = Path(__file__).resolve().parent.parent

# the node's signing key may live outside the node folder (then the folder's database cannot be
# re-signed by whoever can read the folder)
FEDSILO_SIGNING_KEY_FILE = os.environ.get("FEDSILO_SIGNING_KEY_FILE") or None
NODE: NodeConfig | None = load_node(os.environ.get("FEDSILO_NODE_DIR"), FEDSILO_SIGNING_KEY_FILE)
NODE_DIR = NODE.dir if NODE else None
ROLE = NODE.role if NODE else os.environ.get("FEDSILO_ROLE", "datasite")
NODE_NAME = NODE.name if NODE else os.environ.get("FEDSILO_NODE_NAME", "local")
PUBLIC_URL = NODE.public_url if NODE else "http://127.0.0.1:8000"
SECRET_KEY = NODE.secret_key() if NODE else (os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(64))
DATA_DIR = NODE.data_dir if NODE else Path(os.environ.get("FEDSILO_DATA_DIR", BASE_DIR / "data"))

DEBUG = os.environ.get("FEDSILO_DEBUG") == "1"
HTTPS = PUBLIC_URL.startswith("https://")
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("FEDSILO_ALLOWED_HOSTS", "").split(",") if h.strip()] or [
    "127.0.0.1",
    "localhost",
    "[::1]",
    "testserver",
    NODE.host if NODE else "127.0.0.1",
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "ninja",
    "common",
    "audit",
    "webapp",
    "compliance",
    "datasite",
    "orchestrator",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "webapp.auth.TokenAuthenticationMiddleware",
    "audit.middleware.PeerHeadMiddleware",  # records the audit head a peer node sends
    "webapp.auth.AuthenticationRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "webapp.context.node",
            ],
        },
    },
]

_default_db = f"sqlite:///{NODE.dir / 'db.sqlite3'}" if NODE else f"sqlite:///{BASE_DIR / 'dev.sqlite3'}"
DATABASE_URL = os.environ.get("DATABASE_URL") or (NODE.database_url if NODE else "") or _default_db
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL + a busy timeout let the web server and a worker share one file safely;
    # IMMEDIATE transactions take the write lock up front so read-then-write never races.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("FEDSILO_TEST_DB_NAME") or None}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = NODE.dir / "staticfiles" if NODE else None  # runnode collects into the node
WHITENOISE_USE_FINDERS = NODE is None
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Request bodies: model updates are large; everything else is small JSON.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("FEDSILO_MAX_BODY_BYTES", 512 * 1024 * 1024))

# Security: cookies and transport follow the node's public URL scheme.
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = 31_536_000 if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^health$"]
X_FRAME_OPTIONS = "DENY"
CSRF_TRUSTED_ORIGINS = [PUBLIC_URL.rstrip("/")] if NODE else []

# Celery: with no broker, tasks run in-process (the embedded default).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL

# audit: earlier signing keys of this node (rotated), base64, comma-separated; events they signed
# verify with a warning, events signed by any other key than the node's fail verification
FEDSILO_AUDIT_ALLOWED_SIGNERS = [
    k.strip() for k in os.environ.get("FEDSILO_AUDIT_ALLOWED_SIGNERS", "").split(",") if k.strip()
]
FEDSILO_HEARTBEAT_SECONDS = float(os.environ.get("FEDSILO_HEARTBEAT_SECONDS", "10"))
FEDSILO_LEASE_SECONDS = float(os.environ.get("FEDSILO_LEASE_SECONDS", "60"))
# CPU threads for a site's training (0: torch's default); several nodes sharing a few cores want 1
FEDSILO_TORCH_THREADS = int(os.environ.get("FEDSILO_TORCH_THREADS", "0"))
FEDSILO_PUBLIC_DP_SEED = os.environ.get("FEDSILO_PUBLIC_DP_SEED") == "1"  # tests and audits only
# secure aggregation: how long a phase after the first may stay open, how often a site polls
FEDSILO_SECAGG_PHASE_SECONDS = float(os.environ.get("FEDSILO_SECAGG_PHASE_SECONDS", "120"))
FEDSILO_SECAGG_POLL_SECONDS = float(os.environ.get("FEDSILO_SECAGG_POLL_SECONDS", "0.5"))
# he mode: values per encrypted chunk (None: privacy.he's default), processes summing chunks
_he_chunk = os.environ.get("FEDSILO_HE_CHUNK_VALUES")
FEDSILO_HE_CHUNK_VALUES = int(_he_chunk) if _he_chunk else None
FEDSILO_HE_SUM_WORKERS = int(os.environ.get("FEDSILO_HE_SUM_WORKERS") or os.cpu_count() or 1)
# where recipes look for local pretrained weights (never downloaded)
FEDSILO_CACHE = Path(os.environ.get("FEDSILO_CACHE") or Path.home() / ".cache" / "fedsilo")
# Redis redelivers an unacknowledged task after this long; the round lease stops a second
# copy from training while the first still runs. RabbitMQ redelivers when a worker dies.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": float(os.environ.get("FEDSILO_VISIBILITY_TIMEOUT", "3600"))
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("FEDSILO_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
    },
}
