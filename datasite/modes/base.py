"""What an aggregation mode is at a datasite: the interface every mode implements.

A mode decides everything about a study that depends on how its updates are aggregated
(``Plan.aggregation``); the rest of the datasite asks the mode and never the mode's name.

Adding a round mode
-------------------

1. Write ``datasite/modes/<name>.py`` with a subclass of :class:`SiteMode` (or of
   :class:`datasite.modes.secagg.SecAggMode` to reuse its secure statistics session): set
   ``name`` and ``description``, implement :meth:`SiteMode.contribute`, override
   :meth:`~SiteMode.release_stats`, :meth:`~SiteMode.start_stats` and
   :meth:`~SiteMode.check_code_request` where the mode differs, and give it a ninja
   ``router`` for endpoints of its own (they are served under ``/api/secure``).
2. Add one line to :data:`datasite.modes.MODES`.

The orchestrator's side is its ``RoundMode`` of the same name (:mod:`orchestrator.modes`);
a plan naming a mode that a site does not register is refused when its code request arrives.
"""

from __future__ import annotations

import base64
from typing import ClassVar

from ninja import Router

from common.errors import Forbidden, ServiceError
from common.protocol import CodeRequestIn
from datasite.models import CodeRequest, RoundRun


class SiteMode:
    """One aggregation mode as a datasite takes part in it."""

    name: ClassVar[str]
    description: ClassVar[str]  # what the orchestrator sees, for the data owner reviewing a plan
    router: ClassVar[Router | None] = None  # the mode's own endpoints, under /api/secure

    def check_code_request(self, body: CodeRequestIn) -> None:
        """Refuse (``ServiceError``) a code request this site cannot run in this mode.

        Every mode: relayed signing keys must be well-formed keys of the study's sites. A
        secure study whose request lacks a site's key can still be reviewed, but this site
        will refuse every secure session that includes that site."""
        strangers = sorted(set(body.site_keys) - set(body.sites))
        if strangers:
            raise ServiceError(f"signing keys relayed for sites outside the study: {strangers}")
        for name, key in body.site_keys.items():
            try:
                raw = base64.b64decode(key, validate=True)
            except ValueError as exc:
                raise ServiceError(f"signing key of {name!r} is not base64") from exc
            if len(raw) != 32:
                raise ServiceError(f"signing key of {name!r} is not a 32-byte Ed25519 key")

    def release_stats(self, study: str) -> dict:
        """This site's normalization statistics in the clear, where the mode lets them leave."""
        raise Forbidden("this study aggregates securely: statistics go through the secure sum only")

    def start_stats(self, request: CodeRequest) -> dict:
        """Start this site's part of a secure statistics session (approved ``request``)."""
        raise Forbidden("this study does not aggregate securely")

    def contribute(self, run: RoundRun) -> bool:
        """Send a finished round's result (update and public metrics) to the orchestrator;
        True when it was delivered. Called again for a redelivered round."""
        raise NotImplementedError
