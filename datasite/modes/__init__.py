"""The aggregation modes at a datasite, registered by name (``Plan.aggregation``).

Each mode is one module with one :class:`~datasite.modes.base.SiteMode` (see its module for
the interface and "Adding a round mode"): ``plain``, ``secagg`` and ``he``. Everything else
at the site asks :func:`of` for a plan's mode and never compares mode names.
"""

from __future__ import annotations

from ninja import Router

from common.errors import ServiceError
from common.protocol import Plan
from datasite.models import CodeRequest
from datasite.modes.base import SiteMode
from datasite.modes.he import HEMode
from datasite.modes.plain import PlainMode
from datasite.modes.secagg import SecAggMode
from datasite.studies import plan_of

MODES: dict[str, SiteMode] = {mode.name: mode for mode in (PlainMode(), SecAggMode(), HEMode())}


def of(plan: Plan) -> SiteMode:
    """The mode a plan aggregates with; a ``ServiceError`` when this site has no such mode."""
    mode = MODES.get(plan.aggregation)
    if mode is None:
        raise ServiceError(
            f"this site cannot aggregate with {plan.aggregation!r}; it knows {', '.join(MODES)}"
        )
    return mode


def of_request(request: CodeRequest) -> SiteMode:
    return of(plan_of(request))


def routers() -> list[Router]:
    """The modes' own endpoints (served under ``/api/secure``)."""
    return [mode.router for mode in MODES.values() if mode.router is not None]
