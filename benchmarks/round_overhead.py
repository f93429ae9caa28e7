"""Orchestration and transport time of one federated round, without training, for 3/10/30 sites.

The figure is the wall time of one round, from the engine opening it to the round closed
(aggregated, new global weights checkpointed), as a multiple of the time it takes to serialize
the model once (``orchestrator.tensors.to_bytes`` of the ``act-small`` trainable weights,
safetensors).

What runs, and how real it is:

- **orchestrator web server**: a real orchestrator node folder (``manage.py init_node``) served by
  gunicorn exactly as ``manage.py runnode`` serves it (same flags; ``--workers``/``--threads``
  as given), on loopback, with its own SQLite database (WAL);
- **round engine**: this process, with Django set up on the same node folder, calls
  :func:`orchestrator.engine.advance`, which is what ``manage.py run_engine`` (the engine process
  ``runnode`` starts) calls in its loop: open the round, read the previous checkpoint, send each
  participant its assignment (JSON) and the global weights (safetensors) with
  :class:`orchestrator.sites.SiteClient`, then, once every site has reported, load the updates,
  ``aggregate_plain`` + ``server_update`` (FedAvg), checkpoint, audit;
- **datasites**: N lightweight HTTP responders (``http.server``, one per site, all in one child
  process, one thread per connection) on loopback. On an assignment a responder reads the whole
  request (weights included), answers 202 as a datasite does, and at once uploads a precomputed
  update (same names, shapes and dtype as the model, serialized once with the datasite's own
  ``save_safetensors``) with httpx to the orchestrator's real upload endpoint
  ``POST /api/studies/{id}/rounds/{r}/updates`` (multipart ``meta`` + ``update``) with its peer
  token, where the real view validates it against the study's manifest, checks finiteness,
  stores it and records it in the database and the audit log.

Included: HTTP both ways, multipart encoding/parsing, safetensors parsing and checking, database
writes, audit events, aggregation, the server update and the checkpoint (fsync'd).
Excluded: training and everything else a real datasite does with an assignment (validation,
Celery, DP, its own database), secure aggregation (plain mode: the upper bound of what the
orchestrator has to move is the same, its compute is not), TLS, and the engine's poll interval
(``run_engine`` polls every second; here the engine is stepped as soon as the last upload has
been stored, so a real round closes up to one poll interval later). Study set-up (proposal,
approval, statistics pooling, initial weights) is done once per study, outside the timing,
by the orchestrator's own services and ORM.

    .venv/bin/python benchmarks/round_overhead.py                       # act-small, 3/10/30 sites
    .venv/bin/python benchmarks/round_overhead.py --model act-tiny      # the tests' tiny ACT
    .venv/bin/python benchmarks/round_overhead.py --sites 3 10 --rounds 2

Writes ``benchmarks/results/round_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MANAGE = REPO / "manage.py"
DEFAULT_OUT = HERE / "results" / "round_overhead.json"
RECIPE = "act-small"
NUM_EXAMPLES = 300  # every simulated site's example count (and the secagg plan's max_weight)
SECAGG_CLIP = 0.01  # the updates are 1e-3 · N(0, 1): nothing is clipped
SYNTHETIC = {"synthetic-1e6": 10**6, "synthetic-1e7": 10**7}  # 10 float32 tensors, no recipe behind them
MODELS: dict[str, dict[str, Any]] = {
    "act-small": {},  # the recipe as defined: ResNet18 trained too
    "act-tiny": {  # the integration tests' TINY_ACT
        "dim_model": 64, "n_heads": 2, "dim_feedforward": 128, "n_encoder_layers": 1,
        "n_decoder_layers": 1, "n_vae_encoder_layers": 1, "chunk_size": 5, "n_action_steps": 5,
        "latent_dim": 8, "freeze_backbone": True, "cameras": ["observation.images.top"],
    },
}
_ASSIGN_PATH = re.compile(r"^/api/studies/([0-9a-f]{32})/rounds/(\d+)$")


# --------------------------------------------------------------------------- simulated datasites
# The child process (``--serve-sites CONFIG``) imports neither Django nor torch.


def _read_body(handler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def serve_sites(config_path: Path) -> None:
    """Serve every simulated datasite named in the config until stdin closes."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    cfg = json.loads(Path(config_path).read_text())
    update = Path(cfg["update_path"]).read_bytes()
    orchestrator = cfg["orchestrator"]
    secure = cfg["aggregation"] == "secagg"
    timings = Path(cfg["timings_path"])
    if secure:
        from safetensors.numpy import load as load_arrays

        arrays = load_arrays(update)

    def upload(name: str, token: str, study: str, number: int) -> None:
        meta = {
            "study": study, "round": number, "site": name, "num_examples": cfg["num_examples"],
            "local_steps": cfg["local_steps"],
            "metrics": {"heldout_loss": 0.5, "holdout_episodes": 3, "loss_before": 0.6, "loss_after": 0.4,
                        "steps": cfg["local_steps"], "dataset": "so100", "dp": False},
        }
        try:
            response = httpx.post(
                f"{orchestrator}/api/studies/{study}/rounds/{number}/updates",
                data={"meta": json.dumps(meta)},
                files={"update": ("update.safetensors", update, "application/octet-stream")},
                headers={"Authorization": f"Bearer {token}"}, timeout=600,
            )
        except httpx.HTTPError as exc:
            print(f"{name} round {number}: upload failed: {exc!r}", file=sys.stderr, flush=True)
            return
        if response.status_code != 201:
            print(f"{name} round {number}: HTTP {response.status_code} {response.text[:300]}",
                  file=sys.stderr, flush=True)

    def handler_for(name: str, token: str):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = _read_body(self)
                match = _ASSIGN_PATH.match(self.path)
                if match is None or not body:
                    self._reply(404, {"detail": "not a round assignment"})
                    return
                self._reply(202, {"status": "queued", "attempts": 1})
                study, number = match.group(1), int(match.group(2))
                if secure:
                    args = (orchestrator, cfg, arrays, name, token, study, number, timings)
                    threading.Thread(target=secagg_participate, args=args, daemon=True).start()
                else:
                    threading.Thread(target=upload, args=(name, token, study, number), daemon=True).start()

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        return Handler

    ports = {}
    for site in cfg["sites"]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(site["name"], site["token"]))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ports[site["name"]] = server.server_address[1]
    print(json.dumps(ports), flush=True)
    sys.stdin.read()  # the parent closes our stdin to stop us


_timings_lock = threading.Lock()


def secagg_participate(orchestrator: str, cfg: dict, arrays: dict, name: str, token: str, study: str,
                       number: int, timings) -> None:
    """One simulated site's part in a secagg round: the four phases over the real secure API.

    What a datasite's ``datasite.modes.secagg._participate`` does after training, with the same
    library calls (encode + quantize, advertise, share, mask, unmask) and HTTP messages; polls
    every ``cfg["poll_s"]``. Writes the CPU seconds this site's thread spent in those library
    calls (outside HTTP; thread CPU time, so waiting for the GIL does not count) to ``timings``.
    """
    import httpx
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from privacy.secagg import EncryptedShare, KeyAdvert, SecAggClient, SecAggParams, UnmaskRequest
    from privacy.secure_vector import UpdateEncoding, layout_from

    poll = cfg["poll_s"]
    base = f"{orchestrator}/api/secure/studies/{study}/rounds/{number}"
    compute = 0.0

    def timed(fn, *args):
        nonlocal compute
        t0 = time.thread_time()
        out = fn(*args)
        compute += time.thread_time() - t0
        return out

    # a fresh connection per request: a polled keep-alive connection may be closed by gunicorn
    # just as the next request goes out (the datasite retries then; this simulation does not)
    fresh = httpx.Limits(max_keepalive_connections=0)
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=600, limits=fresh) as http:

        def wait(path: str, key: str):
            while True:
                response = http.get(path)
                response.raise_for_status()
                value = response.json().get(key)
                if value is not None:
                    return value
                time.sleep(poll)

        def post(path: str, **kwargs) -> None:
            response = http.post(path, **kwargs)
            if response.status_code != 201:
                raise RuntimeError(f"POST {path}: HTTP {response.status_code} {response.text[:300]}")

        try:
            setup = wait("/setup", "setup")
            params = SecAggParams.from_dict(setup["params"])
            layout = setup["layout"]

            def quantized():
                enc = UpdateEncoding(layout_from(layout["manifest"]), layout["strategy"], params.clip,
                                     layout["max_weight"], layout["max_steps"])
                floats, _ = enc.encode(arrays, cfg["num_examples"], cfg["local_steps"])
                return params.quantize(floats)

            vector = timed(quantized)
            key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(cfg["signing_keys"][name]))
            peers = {n: bytes.fromhex(k) for n, k in cfg["verify_keys"].items() if n in params.sites}
            client = SecAggClient(name, setup["session_id"], key, peers, params)
            post("/advert", json=timed(lambda: client.advertise_keys().to_dict()))
            adverts = [KeyAdvert.from_dict(d) for d in wait("/adverts", "adverts")]
            shares = timed(lambda: [m.to_dict() for m in client.share_keys(adverts)])
            post("/shares", json={"shares": shares})
            routed = [EncryptedShare.from_dict(d) for d in wait("/shares", "shares")]
            body = timed(lambda: client.masked_input(vector, routed).to_bytes())
            post("/masked", content=body, headers={"Content-Type": "application/octet-stream"})
            del body
            request = UnmaskRequest.from_dict(wait("/unmask", "request"))
            answer = timed(lambda: client.unmask(request.survivors, request.dropped).to_dict())
            metrics = {"heldout_loss": 0.5, "steps": cfg["local_steps"]}
            post("/unmask", json={"response": answer, "metrics": metrics})
        except Exception as exc:  # reported to the parent through the log
            print(f"{name} round {number}: secagg failed: {exc!r}", file=sys.stderr, flush=True)
            return
    with _timings_lock, timings.open("a") as fh:
        fh.write(json.dumps({"site": name, "study": study, "round": number, "compute_s": compute}) + "\n")


# --------------------------------------------------------------------------- orchestrator side


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_env(node_dir: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FEDSILO_NODE_DIR", "DATABASE_URL")}
    env.update(HF_HUB_OFFLINE="1", FEDSILO_LOG_LEVEL="WARNING", DJANGO_SETTINGS_MODULE="webapp.settings")
    if node_dir is not None:
        env["FEDSILO_NODE_DIR"] = str(node_dir)
    return env


def start_orchestrator(work: Path, workers: int, threads: int) -> tuple[Path, str, subprocess.Popen]:
    """A real orchestrator node folder served by gunicorn as ``runnode`` serves it (no engine loop)."""
    import httpx

    node_dir, port = work / "orchestrator", _free_port()
    subprocess.run([sys.executable, str(MANAGE), "init_node", "--role", "orchestrator", "--name",
                    "orchestrator", "--dir", str(node_dir), "--port", str(port)], env=_node_env(),
                   check=True, capture_output=True, text=True)
    env = _node_env(node_dir)
    subprocess.run([sys.executable, str(MANAGE), "collectstatic", "--noinput", "-v0"], env=env, check=True,
                   capture_output=True, text=True)
    log = (work / "gunicorn.log").open("ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "webapp.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--threads", str(threads), "--timeout", "600", "--graceful-timeout", "15",
         "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited ({server.returncode}); see {work / 'gunicorn.log'}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return node_dir, url, server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError("the orchestrator did not become healthy within 60 s")


def setup_django(node_dir: Path) -> None:
    """Django in this process on the orchestrator's node folder (as ``run_engine`` has it)."""
    os.environ.pop("DATABASE_URL", None)
    os.environ.update(FEDSILO_NODE_DIR=str(node_dir), DJANGO_SETTINGS_MODULE="webapp.settings",
                      FEDSILO_LOG_LEVEL="WARNING")
    import django

    django.setup()


def model_weights(model: str) -> dict[str, Any]:
    """The recipe's trainable weights (float32 numpy, sorted names), data-free."""
    if model in SYNTHETIC:
        import numpy as np

        rng = np.random.default_rng(1)
        shape = (SYNTHETIC[model] // 10_000, 1000)
        return {f"layer{i}.weight": rng.standard_normal(shape, dtype=np.float32) * 0.05 for i in range(10)}
    from datasite.datagen import so100_features
    from datasite.training.recipes import build_policy
    from datasite.training.weights import trainable_state

    bundle = build_policy(RECIPE, MODELS[model], so100_features((96, 128)), synthetic_stats(), device="cpu")
    return {k: v.numpy() for k, v in trainable_state(bundle.policy).items()}


def synthetic_stats() -> dict[str, dict[str, Any]]:
    """Normalization statistics of the real shapes (what the assignment JSON carries)."""
    import numpy as np

    joints = {"mean": np.zeros(6), "std": np.full(6, 20.0), "min": np.full(6, -90.0), "max": np.full(6, 90.0),
              "count": np.array([1000])}
    image = {"mean": np.full((3, 1, 1), 0.4), "std": np.full((3, 1, 1), 0.2), "min": np.zeros((3, 1, 1)),
             "max": np.ones((3, 1, 1)), "count": np.array([64])}
    return {"observation.state": joints, "action": joints,
            "observation.images.top": image, "observation.images.wrist": image}


def time_serialization(weights: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds to serialize the model once: numpy (orchestrator) and torch (datasite)."""
    import torch

    from datasite.training.weights import save_safetensors
    from orchestrator.tensors import to_bytes

    tensors = {k: torch.from_numpy(v) for k, v in weights.items()}
    out: dict[str, list[float]] = {"orchestrator_to_bytes_s": [], "datasite_save_safetensors_s": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        to_bytes(weights)
        t1 = time.perf_counter()
        save_safetensors(tensors)
        t2 = time.perf_counter()
        out["orchestrator_to_bytes_s"].append(t1 - t0)
        out["datasite_save_safetensors_s"].append(t2 - t1)
    return {k: statistics.median(v) for k, v in out.items()} | {
        k.removesuffix("_s") + "_best_s": min(v) for k, v in out.items()
    }


class Federation:
    """Datasites registered at the orchestrator (ORM) and served by the child process."""

    def __init__(self, work: Path, url: str, names: list[str], weights: dict[str, Any], local_steps: int,
                 aggregation: str, poll_s: float):
        import base64

        import numpy as np
        import torch
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from datasite.training.weights import save_safetensors
        from orchestrator.federation import invite_datasite
        from orchestrator.models import Datasite

        rng = np.random.default_rng(0)
        update = {k: torch.from_numpy((rng.standard_normal(v.shape) * 1e-3).astype(v.dtype))
                  for k, v in weights.items()}
        self.update = {k: v.numpy() for k, v in update.items()}
        update_path = work / "update.safetensors"
        update_path.write_bytes(save_safetensors(update))
        self.update_bytes = update_path.stat().st_size
        tokens = {}
        for name in names:
            _, tokens[name] = invite_datasite(name)
        signing = {name: Ed25519PrivateKey.generate() for name in names}  # the sites' long-term keys
        verify = {name: key.public_key().public_bytes_raw() for name, key in signing.items()}
        self.timings_path = work / f"site_compute_{aggregation}.jsonl"
        cfg = {"orchestrator": url, "update_path": str(update_path), "num_examples": NUM_EXAMPLES,
               "local_steps": local_steps, "sites": [{"name": n, "token": tokens[n]} for n in names],
               "aggregation": aggregation, "poll_s": poll_s, "timings_path": str(self.timings_path),
               "signing_keys": {n: k.private_bytes_raw().hex() for n, k in signing.items()},
               "verify_keys": {n: k.hex() for n, k in verify.items()}}
        config_path = work / "sites.json"
        config_path.write_text(json.dumps(cfg))
        self.log_path = work / f"sites_{aggregation}.log"
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-sites", str(config_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log_path.open("ab"), text=True,
            env=_node_env(),
        )
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulated datasites did not start; see {self.log_path}")
        for name, port in json.loads(line).items():
            Datasite.objects.filter(name=name).update(
                url=f"http://127.0.0.1:{port}", callback_token="bench-callback",  # noqa: S106
                status=Datasite.Status.JOINED, signing_key=base64.b64encode(verify[name]).decode(),
            )

    def site_compute(self, study: str, number: int) -> list[float]:
        """Seconds each secagg site spent computing (outside HTTP) in that round."""
        if not self.timings_path.exists():
            return []
        rows = [json.loads(line) for line in self.timings_path.read_text().splitlines() if line]
        return [r["compute_s"] for r in rows if r["study"] == study and r["round"] == number]

    def errors(self) -> str:
        return self.log_path.read_text()[-2000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def make_study(n: int, names: list[str], weights, rounds: int, local_steps: int, aggregation: str) -> str:
    """A study of the first ``n`` sites, approved and initialised, at the start of round 1."""
    from django.contrib.auth import get_user_model

    from common.protocol import CodeBundle, DPPlan, Plan, SecurePlan
    from orchestrator import checkpoints, services
    from orchestrator.models import Study, StudySite
    from orchestrator.tensors import manifest_of
    from privacy.strategies import ServerState

    researcher, _ = get_user_model().objects.get_or_create(username="researcher")
    plan = Plan(rounds=rounds, local_steps=local_steps, strategy="fedavg", min_sites=n, fraction=1.0,
                aggregation=aggregation, secure=SecurePlan(clip=SECAGG_CLIP, max_weight=NUM_EXAMPLES),
                dp=DPPlan(enabled=False), round_timeout_s=3600)
    code = CodeBundle(recipe=RECIPE, config={})
    study = services.propose(researcher, f"round overhead, {n} sites, {aggregation}", code, plan,
                             {name: "so100" for name in names[:n]})
    StudySite.objects.filter(study=study).update(status=StudySite.Status.APPROVED, episodes=9)
    checkpoints.save(study.pk, 0, weights, ServerState(strategy="fedavg"))
    stats = {k: {s: v.tolist() for s, v in by.items()} for k, by in synthetic_stats().items()}
    Study.objects.filter(pk=study.pk).update(status=Study.Status.RUNNING, current_round=1, phase="train",
                                             manifest=manifest_of(weights), norm_stats=stats)
    return study.pk


def check_result(study_id: str, rounds: int, weights, update) -> None:
    """Every site sent the same update, so FedAvg must have added it once per round."""
    import numpy as np

    from orchestrator import checkpoints

    final, state = checkpoints.load(study_id, rounds)
    for name, w in weights.items():
        if not np.allclose(final[name], w + rounds * update[name], rtol=1e-5, atol=1e-6):
            raise RuntimeError(f"round {rounds}: {name} is not the initial weights plus {rounds} updates")
    if state.round != rounds:
        raise RuntimeError(f"the server state says round {state.round}, expected {rounds}")


def time_round(study_id: str, number: int, n: int, fed: Federation, timeout: float,
               aggregation: str, poll_s: float) -> dict[str, float]:
    """One round through the real engine: open + send, wait for n stored uploads, close."""
    from orchestrator import checkpoints, engine
    from orchestrator.models import Round, SiteUpdate, Study

    if aggregation == "secagg":
        return time_secagg_round(study_id, number, fed, timeout, poll_s)
    t0 = time.perf_counter()
    engine.advance(Study.objects.get(pk=study_id))  # opens the round and sends every assignment
    t_sent = time.perf_counter()
    rnd = Round.objects.get(study_id=study_id, number=number)
    if rnd.dropped:
        raise RuntimeError(f"round {number}: sites refused the assignment: {rnd.metrics.get('refusals')}")
    deadline = time.monotonic() + timeout
    while SiteUpdate.objects.filter(round=rnd).count() < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"round {number}: only {SiteUpdate.objects.filter(round=rnd).count()}/{n} "
                               f"uploads after {timeout:.0f} s; simulated sites said: {fed.errors()}")
        time.sleep(0.005)
    t_uploaded = time.perf_counter()
    engine.advance(Study.objects.get(pk=study_id))  # aggregates, updates, checkpoints, closes
    t_closed = time.perf_counter()
    rnd.refresh_from_db()
    study = Study.objects.get(pk=study_id)
    if rnd.status != Round.Status.DONE or rnd.dropped or study.current_round != number + 1:
        raise RuntimeError(f"round {number} did not close cleanly: {rnd.status}, dropped {rnd.dropped}, "
                           f"study {study.status} {study.error}")
    shutil.rmtree(checkpoints.study_dir(study_id) / "updates" / f"round-{number:05d}", ignore_errors=True)
    return {"round_s": t_closed - t0, "send_s": t_sent - t0, "wait_uploads_s": t_uploaded - t_sent,
            "close_s": t_closed - t_uploaded}


def time_secagg_round(study_id: str, number: int, fed: Federation, timeout: float,
                      poll_s: float) -> dict[str, float]:
    """One secagg round through the real engine, stepped every ``poll_s`` until it is closed.

    Returns the round's wall time, when each SecAgg+ phase closed (seconds from the start), and
    the CPU seconds the simulated sites spent in the protocol (all of them share this machine's
    cores with the orchestrator, where separate organisations would compute in parallel).
    """
    from orchestrator import engine
    from orchestrator.models import Round, Study
    from orchestrator.secure_models import SecureSession

    t0 = time.perf_counter()
    engine.advance(Study.objects.get(pk=study_id))  # opens the round and sends every assignment
    marks: dict[str, float] = {"send_s": time.perf_counter() - t0}
    deadline = time.monotonic() + timeout
    while True:
        engine.advance(Study.objects.get(pk=study_id))
        phase = SecureSession.objects.filter(study_id=study_id, number=number).values_list("phase", flat=True)
        phase = phase.first()
        if phase is not None and f"{phase}_at_s" not in marks:
            marks[f"{phase}_at_s"] = time.perf_counter() - t0
        if phase in ("done", "failed"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"round {number}: secagg still in phase {phase} after {timeout:.0f} s; "
                               f"simulated sites said: {fed.errors()}")
        time.sleep(poll_s)
    total = time.perf_counter() - t0
    rnd = Round.objects.get(study_id=study_id, number=number)
    study = Study.objects.get(pk=study_id)
    if phase != "done" or rnd.status != Round.Status.DONE or rnd.dropped or study.current_round != number + 1:
        raise RuntimeError(f"round {number} did not close cleanly: session {phase}, round {rnd.status}, "
                           f"dropped {rnd.dropped}, study {study.status} {study.error}; "
                           f"sites: {fed.errors()}")
    compute = fed.site_compute(study_id, number)
    while len(compute) < len(rnd.participants) and time.monotonic() < deadline:
        time.sleep(0.01)  # a site writes its timing just after its last message
        compute = fed.site_compute(study_id, number)
    return {"round_s": total, **marks, "sites_cpu_sum_s": sum(compute), "sites_cpu_max_s": max(compute)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every site count; returns the figures written to the JSON file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tqdm.auto import tqdm

    started = time.perf_counter()
    counts = sorted(set(args.sites))
    with tempfile.TemporaryDirectory(prefix="fedsilo-round-overhead-") as tmp:
        work = Path(tmp)
        print(f"starting an orchestrator (gunicorn, {args.workers} worker(s) x {args.threads} threads) "
              f"in {work} ...", flush=True)
        node_dir, url, server = start_orchestrator(work, args.workers, args.threads)
        feds: dict[str, Federation] = {}
        try:
            setup_django(node_dir)
            weights = model_weights(args.model)
            params = sum(int(v.size) for v in weights.values())
            serial = time_serialization(weights, args.serialize_repeats)
            unit = serial["orchestrator_to_bytes_s"]
            from orchestrator.tensors import to_bytes

            model_bytes = len(to_bytes(weights))
            modes = list(dict.fromkeys(args.aggregation))
            names = {m: [f"{m}-{i:02d}" for i in range(max(counts))] for m in modes}
            for m in modes:
                feds[m] = Federation(work, url, names[m], weights, 10, m, args.site_poll)
            rows, ratios = [], []
            rounds = args.warmup + args.rounds
            with tqdm(total=len(counts) * len(modes) * rounds, desc="rounds", unit="round") as bar:
                for n in counts:
                    bar.set_description(f"{n} sites")
                    studies = {m: make_study(n, names[m], weights, rounds, 10, m) for m in modes}
                    timed: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
                    for r in range(1, rounds + 1):
                        for m in modes:  # interleaved, so that load on the machine hits every mode alike
                            t = time_round(studies[m], r, n, feds[m], args.timeout, m, args.site_poll)
                            if r > args.warmup:
                                timed[m].append(t)
                            bar.update(1)
                    for m in modes:
                        check_result(studies[m], rounds, weights, feds[m].update)
                        rows.append({"aggregation": m, **summarise(n, timed[m], unit, model_bytes,
                                                                   feds[m].update_bytes)})
                    if "plain" in modes and "secagg" in modes:
                        ratios.append(secagg_ratio(n, timed["plain"], timed["secagg"]))
        finally:
            for fed in feds.values():
                fed.stop()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    import torch

    return {
        "benchmark": "round_overhead",
        "model": {"recipe": None if args.model in SYNTHETIC else RECIPE, "name": args.model,
                  "config": MODELS.get(args.model, {}), "parameters": params,
                  "tensors": len(weights), "safetensors_bytes": model_bytes},
        "serialize": serial,
        "unit": "orchestrator_to_bytes_s (median)",
        "settings": {"sites": counts, "rounds": args.rounds, "warmup": args.warmup, "workers": args.workers,
                     "threads": args.threads, "strategy": "fedavg", "aggregation": modes,
                     "secagg": {"clip": SECAGG_CLIP, "threshold": "default (n // 2 + 1)",
                                "engine_and_site_poll_s": args.site_poll},
                     "database": "sqlite (WAL)"},
        "rows": rows,
        "secagg_vs_plain": ratios,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def summarise(n: int, timed: list[dict[str, float]], unit: float, model_bytes: int,
              update_bytes: int) -> dict[str, Any]:
    med = {k: statistics.median(t[k] for t in timed) for k in timed[0]}
    best = min(t["round_s"] for t in timed)
    return {
        "sites": n,
        **{f"{k}_median": v for k, v in med.items()},
        "round_s_best": best,
        "round_over_serialize": med["round_s"] / unit,
        "round_over_serialize_best": best / unit,
        "per_site_over_serialize": med["round_s"] / (n * unit),
        "bytes_moved": n * (model_bytes + update_bytes),
        "samples": timed,
    }


def secagg_ratio(n: int, plain: list[dict[str, float]], secagg: list[dict[str, float]]) -> dict[str, Any]:
    """A secagg round against a plain round of the same sites, from the interleaved rounds."""
    p = statistics.median(t["round_s"] for t in plain)
    s = statistics.median(t["round_s"] for t in secagg)
    phases = ("advertise", "share", "mask", "unmask", "done")
    return {"sites": n, "plain_round_s": p, "secagg_round_s": s, "ratio": s / p, "goal": "<= 1.5x",
            "secagg_phase_closed_at_s": {ph: statistics.median(t[f"{ph}_at_s"] for t in secagg)
                                         for ph in phases},
            "secagg_sites_cpu_s": statistics.median(t["sites_cpu_sum_s"] for t in secagg),
            "secagg_slowest_site_cpu_s": statistics.median(t["sites_cpu_max_s"] for t in secagg)}


def print_report(res: dict[str, Any]) -> None:
    m, s = res["model"], res["serialize"]
    print()
    print(f"model: {m['recipe']} ({m['name']}), {m['parameters']:,} trainable parameters in {m['tensors']} "
          f"tensors, {m['safetensors_bytes'] / 2**20:.1f} MiB as safetensors")
    print(f"serialize once: {1000 * s['orchestrator_to_bytes_s']:.1f} ms (orchestrator to_bytes, median; "
          f"datasite save_safetensors {1000 * s['datasite_save_safetensors_s']:.1f} ms)")
    head = (f"{'mode':>6} {'sites':>5} {'round s':>8} {'best':>7} {'send':>7} {'+uploads':>8} {'close':>7} "
            f"{'round/serialize':>15} {'per site':>9} {'MiB moved':>9}")
    print(head)
    print("-" * len(head))
    for r in res["rows"]:
        phases = (f"{r['wait_uploads_s_median']:>8.2f} {r['close_s_median']:>7.2f}" if "close_s_median" in r
                  else f"{'(phases below)':>16}")
        print(f"{r['aggregation']:>6} {r['sites']:>5} {r['round_s_median']:>8.2f} {r['round_s_best']:>7.2f} "
              f"{r['send_s_median']:>7.2f} {phases} "
              f"{r['round_over_serialize']:>14.0f}x {r['per_site_over_serialize']:>8.1f}x "
              f"{r['bytes_moved'] / 2**20:>9.0f}")
    for q in res["secagg_vs_plain"]:
        at = q["secagg_phase_closed_at_s"]
        print(f"secagg vs plain, {q['sites']} sites: {q['secagg_round_s']:.2f} s / "
              f"{q['plain_round_s']:.2f} s = "
              f"{q['ratio']:.2f}x (goal {q['goal']}). Phases closed at "
              + ", ".join(f"{ph} {at[ph]:.2f} s" for ph in at)
              + f". The sites' protocol work took {q['secagg_sites_cpu_s']:.2f} CPU-s on this machine's "
              f"cores (the slowest site {q['secagg_slowest_site_cpu_s']:.2f} s)")
    st = res["settings"]
    print(f"medians of {st['rounds']} rounds after {st['warmup']} warm-up round(s); send = open the round "
          f"and POST every assignment + weights; +uploads = until the last upload is stored; "
          f"close = aggregate, server update, checkpoint. Training and the engine's 1 s poll interval "
          f"excluded. "
          f"{res['wall_seconds']:.0f} s in all, load average {res['environment']['load_average_1m']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sites", type=int, nargs="+", default=[3, 10, 30], help="site counts to measure")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per site count")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first, per site count")
    ap.add_argument("--model", choices=sorted([*MODELS, *SYNTHETIC]), default="act-small",
                    help="act-small: the recipe's defaults; act-tiny: the integration tests' tiny ACT; "
                         "synthetic-1eK: 10 float32 tensors, 10^K values in all (the orchestrator only "
                         "sees a manifest; the simulated sites do not train)")
    ap.add_argument("--aggregation", nargs="+", choices=["plain", "secagg"], default=["plain"],
                    help="modes to measure, rounds interleaved; both give the secagg/plain round ratio")
    ap.add_argument("--site-poll", type=float, default=0.01,
                    help="secagg: seconds between a simulated site's polls and between engine steps")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (runnode's default)")
    ap.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (runnode's default)")
    ap.add_argument("--serialize-repeats", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for a round's uploads")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    ap.add_argument("--serve-sites", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_sites is None and (min(args.sites) < 1 or args.rounds < 1 or args.warmup < 0):
        ap.error("--sites and --rounds must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_sites is not None:
        serve_sites(args.serve_sites)
        return 0
    res = run(args)
    print_report(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
