"""The ``plain`` aggregation mode at a datasite: the update and the statistics leave in the clear.

The orchestrator sees each site's individual update (and may aggregate it robustly, see
``Plan.robust``); the data owner approved that with the plan.
"""

from __future__ import annotations

from datasite.models import RoundRun
from datasite.modes.base import SiteMode
from datasite.preparation import study_stats
from datasite.results import post_update, stored_update


class PlainMode(SiteMode):
    name = "plain"
    description = "plain: the orchestrator sees this site's individual update"

    def release_stats(self, study: str) -> dict:
        return study_stats(study)

    def contribute(self, run: RoundRun) -> bool:
        return post_update(run, None if run.eval_only else stored_update(run))
