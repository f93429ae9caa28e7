"""Round modes: how a study's updates travel to the orchestrator and are summed.

A study's plan names its mode (``plan.aggregation``); the round engine
(:mod:`orchestrator.engine`) looks the mode up here and calls its
:class:`~orchestrator.modes.base.RoundMode` methods, never asking which mode it runs:

- ``check_proposal(plan, n_sites)``: refuse a plan the mode cannot run (at proposal time);
- ``prepare(study)``: one step of preparation (pooled statistics, keys, initial weights);
- ``drive(study, rnd)``: one step of a training round, until the survivors' sum is formed;
- ``close(study, rnd, total)``: apply that sum to the global model and finish the round.

Modes: ``plain`` (:mod:`~orchestrator.modes.plain`: updates in the clear, robust rules
possible; it also runs every mode's evaluation round), ``secagg``
(:mod:`~orchestrator.modes.secagg`: SecAgg+ masking) and ``he``
(:mod:`~orchestrator.modes.he`: CKKS). The secure modes keep their sums in sessions
(:mod:`orchestrator.secure`), whose messages the sites send to :mod:`orchestrator.secure_api`.

Adding a round mode
-------------------
1. Write one module here, ``orchestrator/modes/<name>.py``, with a subclass of
   :class:`~orchestrator.modes.base.RoundMode`: its ``name`` (the plan's ``aggregation``
   value), ``secure`` (True if plaintext updates must be refused), and the four methods.
   Change the study only through :mod:`orchestrator.studies` (``update``, ``fail``,
   ``initialise``, ``send_round``, ``finish_round``, ...); keep all state in the database or
   in files, since the engine may restart between any two calls. A mode that extends
   another (as ``he`` extends ``secagg``) subclasses it and overrides what differs.
2. Add one line to :data:`MODES` below.

The datasite's mirror (:mod:`datasite.modes`) registers the same name (a site refuses a code
request whose mode it does not know); messages the mode's sites send need their own
endpoints (as :mod:`orchestrator.secure_api` does for ``secagg`` and ``he``).
"""

from __future__ import annotations

from common.errors import ServiceError
from orchestrator.models import Round, Study
from orchestrator.modes.base import RoundMode
from orchestrator.modes.he import HEMode
from orchestrator.modes.plain import PlainMode
from orchestrator.modes.secagg import SecAggMode

MODES: dict[str, RoundMode] = {mode.name: mode for mode in (PlainMode(), SecAggMode(), HEMode())}


def get(name: str) -> RoundMode:
    """The mode called ``name``; a ``ServiceError`` if there is none."""
    mode = MODES.get(name)
    if mode is None:
        raise ServiceError(f"unknown aggregation mode {name!r}; use {', '.join(MODES)}")
    return mode


def of(study: Study) -> RoundMode:
    """The mode of ``study``'s plan."""
    return get(study.plan.get("aggregation", "plain"))


def for_round(study: Study, rnd: Round) -> RoundMode:
    """The mode that drives ``rnd``: the study's, except for the evaluation round (``plain``,
    which collects metrics only)."""
    return MODES["plain"] if rnd.eval_only else of(study)
