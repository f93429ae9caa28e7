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

This module builds the frame: node, scope, chain, and the integrity and event_log sections
that every node has. The sections between them come from the :mod:`provider <compliance.providers>`
of the node's role. A datasite's: record_of_processing (GDPR Art. 30), dpia, approvals, consent,
budgets, data_access (:mod:`datasite.reports`). An orchestrator's: record_of_processing,
studies, sites, rounds (:mod:`orchestrator.reports`). The event log is EU AI Act Art. 12
style. ε that is unbounded (a mechanism without DP noise) is written as the string
``"Infinity"``; times are ISO 8601 in UTC.

Order of generation: the ``report.generated`` audit event is appended *first*, then the chain is
verified, so the head hash the report names is that event's hash (when the chain is intact): the
signed report pins the whole log up to and including its own issuance, and ``verify_report``
later checks that this head is still in the chain. On a broken chain the head is the last event
that verified, and the first section says the chain is broken.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from django.conf import settings
from django.db.models import Q

from audit import trail
from audit.models import AuditEvent
from compliance import providers
from compliance.scope import Scope
from compliance.values import iso

SCHEMA = "fedsilo.compliance-report/1"
NODE_KEYS = ("controller", "contact", "dpo", "retention")
DEFAULT_PURPOSE = "policy-training"


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


def build_report(scope: Scope, actor: Any = None, fmt: str = "json") -> dict[str, Any]:
    """Build (and audit) one report: the generation event first, then the chain, then the records."""
    builder = providers.provider(settings.ROLE)()
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
