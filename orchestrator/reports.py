"""An orchestrator's part of a compliance report: its studies, the sites' decisions, rounds.

The frame around them (node, integrity, event log) is :mod:`compliance.reports`. Registered
for the orchestrator role in :meth:`orchestrator.apps.OrchestratorConfig.ready`.
"""

from __future__ import annotations

from typing import Any

from compliance.providers import Provider
from compliance.reports import DEFAULT_PURPOSE, node_settings
from compliance.scope import ReportError, Scope
from compliance.values import iso, num, username
from orchestrator.models import Study


class OrchestratorReport(Provider):
    """An orchestrator's records in scope: studies, the sites' decisions, rounds."""

    @staticmethod
    def known_studies() -> list[str]:
        return list(Study.objects.values_list("id", flat=True)[:200])

    def load(self, scope: Scope) -> None:
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
        return {"study": s.id, "title": s.title, "researcher": username(s.researcher), "status": s.status,
                "version": s.version, "code_sha256": s.code_sha256, "plan_sha256": s.plan_sha256,
                "aggregation": plan.get("aggregation", "plain"), "dp": plan.get("dp") or {},
                "rounds_planned": plan.get("rounds"), "current_round": s.current_round,
                "created_at": iso(s.created_at), "finished_at": iso(s.finished_at)}
