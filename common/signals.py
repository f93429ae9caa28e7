"""Signals the shared models send; the audit app turns them into audit events.

Sent inside the transaction that made the change, so the event commits or rolls back with it.
"""

from django.dispatch import Signal

token_issued = Signal()  # sender: ApiToken class; token=ApiToken
token_revoked = Signal()  # sender: ApiToken class; token=ApiToken
