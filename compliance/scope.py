"""What a report covers: one study, the whole node ("site"), or a time range."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from audit import trail
from compliance.values import iso


class ReportError(Exception):
    """A report cannot be built for this scope; the message says why."""


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
