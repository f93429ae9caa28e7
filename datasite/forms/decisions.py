"""Decision forms: approve or deny a code request, revoke an approval."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.validators import RegexValidator

HASH_PATTERN = r"^[0-9a-f]{64}$"

_hash = RegexValidator(HASH_PATTERN, "This page is out of date: reload it and review the request again.")


class DecisionForm(forms.Form):
    """Approve or deny: carries the code and plan hashes the data owner was shown."""

    decision = forms.ChoiceField(
        choices=[("approve", "Approve"), ("deny", "Deny")],
        error_messages={"required": "Choose approve or deny."},
    )
    code_sha256 = forms.CharField(widget=forms.HiddenInput, validators=[_hash])
    plan_sha256 = forms.CharField(widget=forms.HiddenInput, validators=[_hash])
    reason = forms.CharField(
        required=False,
        max_length=2000,
        strip=True,
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "Why? (required to deny; the researcher sees it)"}
        ),
    )

    @property
    def approve(self) -> bool:
        return self.cleaned_data["decision"] == "approve"

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("decision") == "deny" and not data.get("reason"):
            self.add_error("reason", "Please give a reason for the denial: the researcher will see it.")
        return data


class RevokeForm(forms.Form):
    reason = forms.CharField(
        max_length=2000,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Why is the approval revoked?"}),
        error_messages={"required": "Please give a reason for revoking the approval."},
    )
