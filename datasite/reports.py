"""A datasite's part of a compliance report: the sections built from its own records.

record_of_processing (GDPR Art. 30), dpia, approvals, consent, budgets, data_access; the
frame around them (node, integrity, event log) is :mod:`compliance.reports`. Registered for the
datasite role in :meth:`datasite.apps.DatasiteConfig.ready`.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Q

from common.roles import PERSON_ROLES
from compliance.providers import Provider
from compliance.reports import DEFAULT_PURPOSE, node_settings
from compliance.scope import ReportError, Scope
from compliance.values import INFINITY, iso, num, username
from datasite import budget
from datasite.consent import consenting
from datasite.models import CodeRequest, ConsentEvent, Dataset, OrchestratorLink, RoundRun
from privacy.ledger import CHARGE, RESERVE

TIMELINE_POINTS = 40  # ε plot points per dataset: each costs an accountant run

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


def _n_studies(n: int) -> str:
    return f"{n} study" if n == 1 else f"{n} studies"


def _role_counts() -> dict[str, int]:
    users = get_user_model().objects.filter(is_active=True)
    return {role: users.filter(groups__name=role).count() for role in PERSON_ROLES}


def _purpose(request: Any) -> str:
    return (request.plan or {}).get("purpose") or DEFAULT_PURPOSE


def _run_time(run: Any) -> datetime:
    return run.started_at or run.created_at


class DatasiteReport(Provider):
    """A datasite's records in scope and the sections built from them."""

    @staticmethod
    def known_studies() -> list[str]:
        return sorted(set(CodeRequest.objects.values_list("study", flat=True)))

    def load(self, scope: Scope) -> None:
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
                     "aggregation: " + (", ".join(f"{m} ({_n_studies(len(s))})"
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
                 "reviewer": username(r.decided_by), "decided_at": iso(r.decided_at),
                 "reason": r.reason, "received_at": iso(r.received_at)}
                for r in self.requests
            ],
        }

    # -- consent

    def consent(self) -> dict[str, Any]:
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
                "recorded_by": username(ev.recorded_by), "evidence": ev.evidence,
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
            ledger = budget.load_ledger(ds)
            points = ledger.timeline(TIMELINE_POINTS)
            row = self._budget_row(ds)
            v = self.views[ds.name]
            row.update({
                "remaining": num(max(0.0, ds.epsilon_max - v.committed)),
                "charges": sum(1 for e in ledger.entries if e.kind == CHARGE),
                "reservations": [{"study": e.study, "steps": e.mechanism.steps, "at": iso(e.at)}
                                 for e in ledger.entries if e.kind == RESERVE],
                "timeline": [{"at": iso(p.at), "spent": num(p.spent), "committed": num(p.committed)}
                             for p in points],
            })
            if self.scope.kind == "study":
                row["study_charges"] = sum(1 for e in ledger.entries
                                           if e.kind == CHARGE and e.study == self.scope.study)
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
