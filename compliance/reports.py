"""Compliance reports built from the node's own records, as one plain, JSON-ready dict.

Schema ``fedsilo.compliance-report/1``::

    {"schema": "fedsilo.compliance-report/1",
     "node": {name, role, public_url, public_key, controller, contact, dpo, retention},
     "scope": {"kind": "study", "study": ID} | {"kind": "site"} | {"kind": "range", "since", "until"},
     "generated_at", "generated_by",
     "generation_event": {seq, hash},          # this report's own "report.generated" event
     "chain": {ok, count, head_hash, first_problem, problem_seq, warnings},
     "warnings": [...],                        # the broken chain, if it is, comes first
     "sections": {"integrity": ..., ...}}      # in reading order; "integrity" is always first

A datasite's sections: integrity, record_of_processing (GDPR Art. 30), dpia, approvals, consent,
budgets, data_access, event_log (EU AI Act Art. 12 style). An orchestrator's: integrity,
record_of_processing, studies, sites, rounds, event_log. ε that is unbounded (a mechanism
without DP noise) is written as the string ``"Infinity"``; times are ISO 8601 in UTC.

Order of generation: the ``report.generated`` audit event is appended *first*, then the chain is
verified, so the head hash the report names is that event's hash (when the chain is intact): the
signed report pins the whole log up to and including its own issuance, and ``verify_report``
later checks that this head is still in the chain. On a broken chain the head is the last event
that verified, and the first section says the chain is broken.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from audit import trail
from audit.models import AuditEvent
from common.roles import PERSON_ROLES

SCHEMA = "fedsilo.compliance-report/1"
INFINITY = "Infinity"
SCOPES = ("study", "site", "range")
NODE_KEYS = ("controller", "contact", "dpo", "retention")
DEFAULT_PURPOSE = "policy-training"
TIMELINE_POINTS = 40  # ε plot points per dataset: each costs an accountant run

SECTION_TITLES = {
    "integrity": "Audit chain integrity",
    "record_of_processing": "Record of processing activities (GDPR Art. 30)",
    "dpia": "DPIA inputs: risks and measured mitigations",
    "approvals": "Approvals of training code",
    "consent": "Consent",
    "budgets": "Privacy budgets",
    "data_access": "Data access",
    "studies": "Studies",
    "sites": "Sites and their decisions",
    "rounds": "Rounds",
    "event_log": "Event log (EU AI Act Art. 12 record-keeping)",
}

RECEIVES = {
    "secagg": "only the sum of the sites' updates (pairwise-masked secure aggregation); "
    "no individual update",
    "he": "CKKS ciphertexts of the updates and the sum decrypted by one datasite; "
    "it holds no secret key (every participating datasite holds the whole key)",
    "plain": "this site's individual update (clipped and DP-noised) in the clear; "
    "allowed only where every data owner agreed",
}
ENCRYPTION = {
    "secagg": "secure aggregation: X25519 key agreement, HKDF, AES-GCM for Shamir shares, pairwise masks",
    "he": "homomorphic encryption: CKKS (TenSEAL), key sealed to each datasite with X25519, "
    "HKDF and AES-GCM; secret key held only by the datasites",
    "plain": "plain aggregation: updates are not encrypted beyond transport",
}


class ReportError(Exception):
    """A report cannot be built for this scope; the message says why."""


# ----------------------------------------------------------------------------- scope


@dataclass(frozen=True)
class Scope:
    """What a report covers: one study, the whole node ("site"), or a time range."""

    kind: str
    study: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "study":
            return {"kind": "study", "study": self.study}
        if self.kind == "range":
            return {"kind": "range", "since": iso(self.since), "until": iso(self.until)}
        return {"kind": "site"}

    @property
    def target(self) -> str:
        """The audit target of the report's generation event."""
        if self.kind == "study":
            return f"study:{self.study}"
        if self.kind == "range":
            return f"range:{iso(self.since) or '-'}/{iso(self.until) or '-'}"
        return f"site:{settings.NODE_NAME}"[: trail.MAX_TARGET]

    def contains(self, at: datetime | None) -> bool:
        """Whether ``at`` lies in the range (always, for study and site scopes)."""
        if self.kind != "range":
            return True
        if at is None:
            return False
        return (self.since is None or at >= self.since) and (self.until is None or at <= self.until)

    def time_q(self, field: str) -> Q:
        """A filter on ``field`` for the range (everything for other scopes)."""
        q = Q()
        if self.kind == "range":
            if self.since is not None:
                q &= Q(**{f"{field}__gte": self.since})
            if self.until is not None:
                q &= Q(**{f"{field}__lte": self.until})
        return q


def parse_when(text: str | None, end: bool = False) -> datetime | None:
    """A date (``2025-03-01``: start of day, or its end when ``end``) or an ISO datetime, in UTC."""
    if not text:
        return None
    text = text.strip()
    try:
        day = parse_date(text)  # first: parse_datetime also reads a bare date, as midnight
        value = datetime.combine(day, time.max if end else time.min) if day else parse_datetime(text)
        if value is None:
            raise ValueError(text)
    except ValueError as exc:
        raise ReportError(f"{text!r} is not a date (YYYY-MM-DD) or an ISO 8601 datetime") from exc
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


def make_scope(study: str | None = None, site: bool = False, since: str | None = None,
               until: str | None = None) -> Scope:
    """Exactly one of: a study id, the whole site, or a date range (either end may be open)."""
    chosen = [bool(study), bool(site), bool(since or until)]
    if sum(chosen) != 1:
        raise ReportError("choose exactly one scope: a study, the whole site, or a date range")
    if study:
        return Scope("study", study=study.strip())
    if site:
        return Scope("site")
    start, stop = parse_when(since), parse_when(until, end=True)
    if start and stop and start > stop:
        raise ReportError("the range starts after it ends")
    return Scope("range", since=start, until=stop)


# ----------------------------------------------------------------------------- small helpers


def iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat(timespec="seconds") if at else None


def num(value: float | None) -> float | str | None:
    """A JSON-safe number: ∞ becomes ``"Infinity"`` (canonical JSON forbids it)."""
    if value is None:
        return None
    return float(value) if math.isfinite(value) else INFINITY


def node_settings() -> dict[str, str]:
    """controller, contact, dpo and retention from the node's ``node.json``, or a hint to set them."""
    found: dict[str, Any] = {}
    if settings.NODE_DIR:
        path = settings.NODE_DIR / "node.json"
        if path.is_file():
            found = json.loads(path.read_text())
    return {
        key: str(found[key]) if found.get(key) else f'not configured (set "{key}" in node.json)'
        for key in NODE_KEYS
    }


def _node() -> dict[str, Any]:
    return {
        "name": settings.NODE_NAME,
        "role": settings.ROLE,
        "public_url": settings.PUBLIC_URL,
        "public_key": trail.public_key_b64(trail.signing_key()),
        **node_settings(),
    }


def _username(user: Any) -> str | None:
    return user.get_username() if user is not None else None


def _studies(n: int) -> str:
    return f"{n} study" if n == 1 else f"{n} studies"


def _role_counts() -> dict[str, int]:
    users = get_user_model().objects.filter(is_active=True)
    return {role: users.filter(groups__name=role).count() for role in PERSON_ROLES}


# ----------------------------------------------------------------------------- the report


def build_report(scope: Scope, actor: Any = None, fmt: str = "json") -> dict[str, Any]:
    """Build (and audit) one report: the generation event first, then the chain, then the records."""
    builder = _OrchestratorReport() if settings.ROLE == "orchestrator" else _DatasiteReport()
    builder.load(scope)  # raises ReportError before anything is recorded
    event = trail.record("report.generated", actor, scope.target,
                         {"schema": SCHEMA, "scope": scope.to_dict(), "format": fmt})
    chain = trail.verify_chain()
    chain_dict = {
        "ok": chain.ok, "count": chain.count, "head_hash": chain.head_hash,
        "first_problem": chain.first_problem, "problem_seq": chain.problem_seq,
        "warnings": list(chain.warnings),
    }
    sections = {"integrity": _integrity(chain_dict, event)}
    sections.update(builder.sections())
    sections["event_log"] = _event_log(scope, chain_dict)
    warnings = [] if chain.ok else [sections["integrity"]["message"]]
    return {
        "schema": SCHEMA,
        "node": _node(),
        "scope": scope.to_dict(),
        "generated_at": iso(event.at),
        "generated_by": event.actor,
        "generation_event": {"seq": event.seq, "hash": event.hash},
        "chain": chain_dict,
        "warnings": warnings + chain_dict["warnings"],
        "sections": sections,
    }


def _integrity(chain: dict[str, Any], event: AuditEvent) -> dict[str, Any]:
    if chain["ok"]:
        message = (f"The audit chain verified: {chain['count']} events, hash-linked and signed, "
                   f"up to head {chain['head_hash']} (this report's own generation event, "
                   f"#{event.seq}, included).")
    else:
        message = (f"WARNING: the audit chain is BROKEN at {chain['first_problem']}. Only the first "
                   f"{chain['count']} events verified (last verified head {chain['head_hash']}); "
                   "later events cannot be trusted: the log was tampered with or damaged. "
                   "Investigate before relying on this report.")
    return {"ok": chain["ok"], "status": "VERIFIED" if chain["ok"] else "BROKEN", "message": message,
            "count": chain["count"], "head_hash": chain["head_hash"],
            "first_problem": chain["first_problem"], "warnings": chain["warnings"]}


def _event_log(scope: Scope, chain: dict[str, Any]) -> dict[str, Any]:
    events = AuditEvent.objects.filter(scope.time_q("at"))
    if scope.kind == "study":
        events = events.filter(Q(target=f"study:{scope.study}") | Q(data__study=scope.study))
    bad_from = chain["problem_seq"] if not chain["ok"] else None
    rows = [
        {"seq": e.seq, "at": iso(e.at), "actor": e.actor, "action": e.action, "target": e.target,
         "hash": e.hash, "data": e.data, "verified": bad_from is None or e.seq < bad_from}
        for e in events.order_by("seq").iterator(chunk_size=1000)
    ]
    return {
        "count": len(rows),
        "unverified": sum(1 for r in rows if not r["verified"]),
        "actions": dict(sorted(Counter(r["action"] for r in rows).items())),
        "events": rows,
        "verification": {k: chain[k] for k in ("ok", "count", "head_hash", "first_problem")},
    }


# ----------------------------------------------------------------------------- datasite


def _purpose(request: Any) -> str:
    return (request.plan or {}).get("purpose") or DEFAULT_PURPOSE


def _run_time(run: Any) -> datetime:
    return run.started_at or run.created_at


class _DatasiteReport:
    """A datasite's records in scope and the sections built from them."""

    def load(self, scope: Scope) -> None:
        from datasite.models import CodeRequest, ConsentEvent, Dataset, RoundRun

        self.scope = scope
        requests = CodeRequest.objects.select_related("decided_by").prefetch_related("datasets")
        runs = RoundRun.objects.select_related("request")
        if scope.kind == "study":
            requests = requests.filter(study=scope.study)
            runs = runs.filter(study=scope.study)
            if not requests.exists():
                raise ReportError(f"no code request for study {scope.study!r} at this site")
        elif scope.kind == "range":
            requests = requests.filter(scope.time_q("received_at") | scope.time_q("decided_at"))
            runs = runs.filter(scope.time_q("started_at")
                               | (Q(started_at__isnull=True) & scope.time_q("created_at")))
        self.requests = list(requests.order_by("study", "version"))
        self.runs = list(runs.order_by("study", "round"))
        if scope.kind == "study":
            self.datasets = list(Dataset.objects.filter(code_requests__study=scope.study).distinct())
        else:
            self.datasets = list(Dataset.objects.all())
        self.consents = list(ConsentEvent.objects.select_related("recorded_by").order_by("at", "id"))
        self.purposes = self._purposes()

    def _purposes(self) -> list[str]:
        planned = {_purpose(r) for r in self.requests}
        if self.scope.kind == "study":
            return sorted(planned)
        return sorted(planned | {e.purpose for e in self.consents})

    def sections(self) -> dict[str, Any]:
        from datasite import budget

        self.views = {ds.name: budget.view(ds) for ds in self.datasets}
        return {
            "record_of_processing": self.record_of_processing(),
            "dpia": self.dpia(),
            "approvals": self.approvals(),
            "consent": self.consent(),
            "budgets": self.budgets(),
            "data_access": self.data_access(),
        }

    # -- record of processing

    def record_of_processing(self) -> dict[str, Any]:
        from datasite.models import OrchestratorLink
        from datasite.services import consenting

        cfg = node_settings()
        link = OrchestratorLink.objects.first()
        orchestrator = (f"the orchestrator {link.name} ({link.url})" if link
                        else "the orchestrator (none joined yet)")
        return {
            "controller": cfg["controller"],
            "contacts": {"contact": cfg["contact"], "dpo": cfg["dpo"]},
            "purposes": [
                {"purpose": p, "consenting_contributors": len(consenting(p)),
                 "studies": [{"study": r.study, "version": r.version, "title": r.title, "status": r.status}
                             for r in self.requests if _purpose(r) == p]}
                for p in self.purposes
            ],
            "data_subjects": {
                "category": "demonstrators: the people who teleoperated the SO-100 robot arm to record "
                            "demonstrations",
                "identification": "pseudonymous contributor ids; no names are stored with the data",
                "per_dataset": {ds.name: len(set(ds.contributors().values())) for ds in self.datasets},
            },
            "data_categories": [self._data_category(ds) for ds in self.datasets],
            "recipients": [
                {"recipient": orchestrator,
                 "receives": "model updates only, as the study's aggregation mode allows",
                 "studies": [{"study": r.study, "aggregation": self._plan(r).get("aggregation", "plain"),
                              "receives": RECEIVES.get(self._plan(r).get("aggregation", "plain"), "")}
                             for r in self._approved()]},
                {"recipient": "researchers of approved studies",
                 "receives": "the final aggregated model and aggregate metrics (losses, counts, ε spent)"},
            ],
            "transfers_of_raw_data": "none: episodes, joint trajectories and camera images never leave "
                                     "this datasite; training runs here on the site's own hardware",
            "retention": cfg["retention"],
            "security_measures": self._security(),
        }

    @staticmethod
    def _plan(request: Any) -> dict[str, Any]:
        return request.plan or {}

    def _approved(self) -> list[Any]:
        return [r for r in self.requests if r.status in ("approved", "revoked")]

    @staticmethod
    def _data_category(ds: Any) -> dict[str, Any]:
        s = ds.summary or {}
        features = s.get("features") or {}
        joints = [f"{k} ({len((features.get(k) or {}).get('names') or []) or '?'} joints)"
                  for k in ("observation.state", "action") if k in features]
        return {
            "dataset": ds.name,
            "robot_type": s.get("robot_type", ""),
            "fps": s.get("fps"),
            "episodes": ds.num_episodes,
            "frames": ds.num_frames,
            "trajectories": "SO-100 joint trajectories: " + (", ".join(joints) or "joint state and action"),
            "cameras": list(s.get("cameras") or []),
        }

    def _security(self) -> dict[str, Any]:
        approved = self._approved()
        modes = sorted({self._plan(r).get("aggregation", "plain") for r in approved})
        return {
            "differential_privacy": [
                {"study": r.study, "version": r.version, "enabled": dp.get("enabled", True),
                 "noise_multiplier": dp.get("noise_multiplier"), "clip_norm": dp.get("clip_norm"),
                 "delta": dp.get("delta"), "unit": dp.get("unit", "episode")}
                for r in approved for dp in [self._plan(r).get("dp") or {}]
            ],
            "aggregation": [{"study": r.study, "mode": self._plan(r).get("aggregation", "plain")}
                            for r in approved],
            "encryption": [
                "between nodes: " + ("HTTPS (TLS)" if settings.HTTPS
                                     else "plain HTTP: the public URL is not https (demo or test only)"),
                *[ENCRYPTION[m] for m in modes if m in ENCRYPTION],
                "audit log: SHA-256 hash chain, each event signed with the node's Ed25519 key",
            ],
            "access_control": {
                "model": "role-based: every page and API needs an authenticated user holding a role; "
                         "peer nodes use per-peer API tokens",
                "users_per_role": _role_counts(),
                "code_approval": "training code runs only after a data owner approved it; the code's "
                                 "SHA-256 and the plan are pinned and re-checked every round",
            },
        }

    # -- DPIA

    def dpia(self) -> dict[str, Any]:
        approvals = dict(sorted(Counter(r.status for r in self.requests).items()))
        units = sorted({(self._plan(r).get("dp") or {}).get("unit", "episode") for r in self._approved()})
        modes: dict[str, list[str]] = {}
        for r in self._approved():
            modes.setdefault(self._plan(r).get("aggregation", "plain"), []).append(r.study)
        budgets = [self._budget_row(ds) for ds in self.datasets]
        over = [b["dataset"] for b in budgets if b["spent"] == INFINITY or b["spent"] > b["epsilon_max"]]
        return {
            "risks": [
                {"id": "membership_inference",
                 "risk": "Membership inference: telling from the model whether a demonstration was used",
                 "mitigations": [
                     "DP-SGD with an (ε, δ) budget per dataset, composed across all studies",
                     f"privacy unit: {', '.join(units) or 'none used yet'}",
                     "datasets over budget: " + (", ".join(over) or "none"),
                 ]},
                {"id": "reconstruction_from_updates",
                 "risk": "Reconstruction of trajectories or images from model updates",
                 "mitigations": [
                     "updates are clipped and noised before they leave the site",
                     "aggregation: " + (", ".join(f"{m} ({_studies(len(s))})"
                                                  for m, s in sorted(modes.items())) or "no approved study"),
                 ]},
                {"id": "code_misuse",
                 "risk": "Training code that leaks or misuses data",
                 "mitigations": [
                     "human approval of each code version, pinned by SHA-256",
                     "decisions: " + (", ".join(f"{k} {v}" for k, v in approvals.items()) or "none"),
                 ]},
            ],
            "epsilon_vs_budget": budgets,
            "privacy_units": units,
            "aggregation_modes": modes,
            "approvals": approvals,
        }

    def _budget_row(self, ds: Any) -> dict[str, Any]:
        v = self.views[ds.name]
        return {"dataset": ds.name, "epsilon_max": ds.epsilon_max, "delta": ds.delta,
                "spent": num(v.spent), "reserved": num(v.reserved), "committed": num(v.committed)}

    # -- approvals

    def approvals(self) -> dict[str, Any]:
        return {
            "count": len(self.requests),
            "requests": [
                {"study": r.study, "version": r.version, "title": r.title, "researcher": r.researcher,
                 "code_sha256": r.code_sha256, "plan_sha256": r.plan_sha256, "plan": r.plan,
                 "datasets": sorted(d.name for d in r.datasets.all()), "status": r.status,
                 "reviewer": _username(r.decided_by), "decided_at": iso(r.decided_at),
                 "reason": r.reason, "received_at": iso(r.received_at)}
                for r in self.requests
            ],
        }

    # -- consent

    def consent(self) -> dict[str, Any]:
        from datasite.services import consenting

        purposes = []
        for p in self.purposes:
            allowed = consenting(p)
            latest = {e.contributor: e.given for e in self.consents if e.purpose == p}
            purposes.append({
                "purpose": p,
                "consenting": len(allowed),
                "withdrawn": sum(1 for given in latest.values() if not given),
                "datasets": [self._coverage(ds, allowed) for ds in self.datasets],
            })
        withdrawals = self._withdrawals()
        return {
            "purposes": purposes,
            "withdrawals": withdrawals,
            "violations": sum(len(s["read_after_withdrawal"]) for w in withdrawals for s in w["studies"]),
        }

    @staticmethod
    def _coverage(ds: Any, allowed: set[str]) -> dict[str, Any]:
        who = ds.contributors()
        people = set(who.values())
        return {"dataset": ds.name, "episodes": len(who),
                "episodes_covered": sum(1 for c in who.values() if c in allowed),
                "contributors": len(people), "contributors_covered": len(people & allowed)}

    def _withdrawals(self) -> list[dict[str, Any]]:
        out = []
        for i, ev in enumerate(self.consents):
            if ev.given or ev.purpose not in self.purposes or not self.scope.contains(ev.at):
                continue
            back = next((e.at for e in self.consents[i + 1:]
                         if e.given and (e.contributor, e.purpose) == (ev.contributor, ev.purpose)), None)
            episodes = {ds.name: sorted(e for e, who in ds.contributors().items() if who == ev.contributor)
                        for ds in self.datasets}
            episodes = {k: v for k, v in episodes.items() if v}
            out.append({
                "contributor": ev.contributor, "purpose": ev.purpose, "at": iso(ev.at),
                "recorded_by": _username(ev.recorded_by), "evidence": ev.evidence,
                "consent_given_again_at": iso(back), "episodes": episodes,
                "studies": self._exclusion(ev.purpose, episodes, ev.at, back),
            })
        return out

    def _exclusion(self, purpose: str, episodes: dict[str, list[int]], at: datetime,
                   back: datetime | None) -> list[dict[str, Any]]:
        """Per study: the rounds that read the withdrawn episodes before, and excluded them after."""
        wanted = {(ds, e) for ds, eps in episodes.items() for e in eps}

        def reads(run: Any) -> bool:
            return any((ds, e) in wanted for ds, eps in (run.episodes_read or {}).items() for e in eps)

        by_study: dict[str, list[Any]] = {}
        for run in self.runs:
            if _purpose(run.request) == purpose and set(run.episodes_read or {}) & set(episodes):
                by_study.setdefault(run.study, []).append(run)
        out = []
        for study, runs in by_study.items():
            after = [r for r in runs if _run_time(r) >= at and (back is None or _run_time(r) < back)]
            before = [r.round for r in runs if _run_time(r) < at and reads(r)]
            excluded = [r.round for r in after if not reads(r)]
            out.append({
                "study": study, "rounds_read_before": before,
                "last_round_read": max(before) if before else None,
                "rounds_excluded": excluded,
                "first_round_excluded": min(excluded) if excluded else None,
                "read_after_withdrawal": [r.round for r in after if reads(r)],
            })
        return out

    # -- budgets

    def budgets(self) -> dict[str, Any]:
        rows = []
        for ds in self.datasets:
            entries = list(ds.ledger.order_by("at", "id"))
            points = epsilon_timeline(entries, ds.delta)
            row = self._budget_row(ds)
            v = self.views[ds.name]
            row.update({
                "remaining": num(max(0.0, ds.epsilon_max - v.committed)),
                "charges": sum(1 for e in entries if e.kind == "charge"),
                "reservations": [{"study": e.study, "steps": e.steps, "at": iso(e.at)}
                                 for e in entries if e.kind == "reserve"],
                "timeline": [{"at": iso(p.at), "spent": num(p.spent), "committed": num(p.committed)}
                             for p in points],
            })
            if self.scope.kind == "study":
                row["study_charges"] = sum(1 for e in entries
                                           if e.kind == "charge" and e.study == self.scope.study)
            if self.scope.kind == "range" and self.scope.until is not None:
                upto = [p for p in points if p.at <= self.scope.until]
                row["at_until"] = {"spent": num(upto[-1].spent if upto else 0.0),
                                   "committed": num(upto[-1].committed if upto else 0.0)}
            rows.append(row)
        return {"accounting": "ε composed from the whole ledger of each dataset (RDP accountant), "
                              "never added; figures are as of generation",
                "datasets": rows}

    # -- data access

    def data_access(self) -> dict[str, Any]:
        rounds, totals = [], {}
        for run in self.runs:
            read = {ds: sorted(int(e) for e in eps) for ds, eps in sorted((run.episodes_read or {}).items())}
            rounds.append({
                "study": run.study, "round": run.round, "status": run.status, "eval_only": run.eval_only,
                "started_at": iso(run.started_at), "finished_at": iso(run.finished_at),
                "counts": {ds: len(eps) for ds, eps in read.items()}, "episodes": read,
            })
            for ds, eps in read.items():
                t = totals.setdefault(ds, {"dataset": ds, "rounds": 0, "episode_reads": 0, "distinct": set()})
                t["rounds"] += 1
                t["episode_reads"] += len(eps)
                t["distinct"].update(eps)
        return {
            "rounds": rounds,
            "totals": [{**{k: v for k, v in t.items() if k != "distinct"},
                        "distinct_episodes": len(t["distinct"])} for _, t in sorted(totals.items())],
        }


@dataclass(frozen=True)
class EpsilonPoint:
    at: datetime
    spent: float
    committed: float


def epsilon_timeline(entries: list[Any], delta: float,
                     max_points: int = TIMELINE_POINTS) -> list[EpsilonPoint]:
    """ε spent and committed after ledger entries, composed from scratch at each point.

    Like :func:`datasite.plots.epsilon_timeline` (a reservation counts for its steps not yet
    charged, until released), but at most ``max_points`` evenly spaced points (the last always)
    and each distinct history composed once: every point costs an accountant run.
    """
    from privacy.accounting import Mechanism, epsilon

    def mech(e: Any, steps: int | None = None) -> Mechanism:
        return Mechanism(e.noise_multiplier, e.sample_rate, e.steps if steps is None else steps, e.unit)

    memo: dict[tuple, float] = {}

    def eps(history: list[Mechanism]) -> float:
        steps: Counter[tuple[float, float]] = Counter()
        for m in history:
            steps[(m.noise_multiplier, m.sample_rate)] += m.steps
        key = tuple(sorted((k, n) for k, n in steps.items() if n))  # what the accountant composes
        if key not in memo:
            memo[key] = epsilon(history, delta)
        return memo[key]

    n = len(entries)
    keep = set(range(n))
    if n > max_points:
        keep = {round(i * (n - 1) / (max_points - 1)) for i in range(max_points)}
    charged: list[Mechanism] = []
    reserved: dict[str, Any] = {}
    used: dict[str, int] = {}
    released: set[str] = set()
    points = []
    for i, e in enumerate(entries):
        if e.kind == "charge":
            charged.append(mech(e))
            used[e.study] = used.get(e.study, 0) + e.steps
        elif e.kind == "reserve":
            reserved[e.study] = e
        elif e.kind == "release":
            released.add(e.study)
        if i in keep:
            outstanding = [mech(r, r.steps - used.get(s, 0)) for s, r in reserved.items()
                           if s not in released and r.steps > used.get(s, 0)]
            points.append(EpsilonPoint(e.at, eps(charged), eps(charged + outstanding)))
    return points


# ----------------------------------------------------------------------------- orchestrator


class _OrchestratorReport:
    """An orchestrator's records in scope: studies, the sites' decisions, rounds."""

    def load(self, scope: Scope) -> None:
        from orchestrator.models import Study

        studies = Study.objects.select_related("researcher").prefetch_related(
            "sites__datasite", "rounds__updates")
        if scope.kind == "study":
            studies = studies.filter(pk=scope.study)
            if not studies.exists():
                raise ReportError(f"no study {scope.study!r} at this orchestrator")
        elif scope.kind == "range":
            studies = studies.filter(scope.time_q("created_at") | scope.time_q("updated_at"))
        self.scope = scope
        self.studies = list(studies.order_by("created_at"))

    def sections(self) -> dict[str, Any]:
        cfg = node_settings()
        plans = [s.plan or {} for s in self.studies]
        return {
            "record_of_processing": {
                "controller": cfg["controller"],
                "contacts": {"contact": cfg["contact"], "dpo": cfg["dpo"]},
                "purposes": sorted({p.get("purpose") or DEFAULT_PURPOSE for p in plans}),
                "recipients": [{"recipient": "researchers of each study",
                                "receives": "the aggregated model and aggregate metrics"}],
                "transfers_of_raw_data": "none: the orchestrator never receives raw data, only updates "
                                         "as each study's aggregation mode allows",
                "retention": cfg["retention"],
                "security_measures": {"aggregation": {s.id: (s.plan or {}).get("aggregation", "plain")
                                                      for s in self.studies}},
            },
            "studies": [self._study(s) for s in self.studies],
            "sites": [
                {"study": s.id, "site": ss.datasite.name, "dataset": ss.dataset, "status": ss.status,
                 "reason": ss.reason, "projected_epsilon": num(ss.projected_epsilon),
                 "episodes": ss.episodes, "request_sent_at": iso(ss.request_sent_at)}
                for s in self.studies for ss in s.sites.all()
            ],
            "rounds": [
                {"study": s.id, "round": r.number, "status": r.status, "eval_only": r.eval_only,
                 "participants": r.participants, "dropped": r.dropped, "updates": r.updates.count(),
                 "started_at": iso(r.started_at), "finished_at": iso(r.finished_at)}
                for s in self.studies for r in s.rounds.order_by("number")
            ],
        }

    @staticmethod
    def _study(s: Any) -> dict[str, Any]:
        plan = s.plan or {}
        return {"study": s.id, "title": s.title, "researcher": _username(s.researcher), "status": s.status,
                "version": s.version, "code_sha256": s.code_sha256, "plan_sha256": s.plan_sha256,
                "aggregation": plan.get("aggregation", "plain"), "dp": plan.get("dp") or {},
                "rounds_planned": plan.get("rounds"), "current_round": s.current_round,
                "created_at": iso(s.created_at), "finished_at": iso(s.finished_at)}


def ordered_sections(report: dict[str, Any]) -> Iterable[tuple[str, str, Any]]:
    """(id, title, content) of each section in reading order, integrity first."""
    sections = report.get("sections") or {}
    keys = ["integrity", *[k for k in sections if k != "integrity"]]
    return [(k, SECTION_TITLES.get(k, k.replace("_", " ").capitalize()), sections[k]) for k in keys
            if k in sections]


def epsilon_value(value: float | str | None) -> float | None:
    """Inverse of :func:`num`."""
    if value is None:
        return None
    return math.inf if value == INFINITY else float(value)
