"""The role-specific part of a compliance report, provided by the app of that role.

A report is one frame (:mod:`compliance.reports`: node, scope, integrity, event log) around
the sections of the node's role. Each app registers, in its ``AppConfig.ready()``, the
:class:`Provider` of its role (``register("datasite", DatasiteReport)``); a report is built by
the provider registered for ``settings.ROLE``. Compliance imports no app: the apps import it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from compliance.scope import Scope


class Provider(ABC):
    """One report's records of a node role, read once, and the role's sections built from them.

    :meth:`load` runs before the report's generation event is recorded and raises
    :class:`compliance.scope.ReportError` when the scope names nothing at this node, so that
    a refused report records nothing; :meth:`sections` runs after it.
    """

    @abstractmethod
    def load(self, scope: Scope) -> None:
        """Read the records in ``scope``."""

    @abstractmethod
    def sections(self) -> dict[str, Any]:
        """The role's sections in reading order (between integrity and the event log)."""

    @staticmethod
    @abstractmethod
    def known_studies() -> list[str]:
        """The ids of the studies known at this node, for the report form's suggestions."""


_providers: dict[str, type[Provider]] = {}


def register(role: str, provider: type[Provider]) -> None:
    """Make ``provider`` build the reports of nodes of ``role``."""
    if _providers.setdefault(role, provider) is not provider:
        raise ImproperlyConfigured(f"another compliance report provider is registered for {role!r}")


def provider(role: str) -> type[Provider]:
    """The provider registered for ``role``."""
    try:
        return _providers[role]
    except KeyError:
        raise ImproperlyConfigured(f"no compliance report provider is registered for {role!r}") from None
