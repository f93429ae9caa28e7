"""Consent forms: one consent given or withdrawn, and the CSV import.

The CSV import checks every line first and names each bad line, so an import is all-or-nothing.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import Any

from django import forms
from django.core.validators import RegexValidator

from common.protocol import PURPOSE_PATTERN
from datasite.models import ConsentEvent, Dataset

CSV_COLUMNS = ("contributor", "purpose", "given", "evidence")
CSV_MAX_BYTES = 1024 * 1024
CSV_MAX_ROWS = 10_000
CSV_MAX_ERRORS = 10
GIVEN = {"1", "true", "yes", "given", "give"}
WITHDRAWN = {"0", "false", "no", "withdrawn", "withdraw"}
PURPOSE_HELP = "lower-case words joined by '-', e.g. policy-training"

_purpose = RegexValidator(PURPOSE_PATTERN, f"A purpose is {PURPOSE_HELP}.")


def known_contributors() -> set[str]:
    """Pseudonyms that appear in a registered dataset or in an earlier consent record."""
    known: set[str] = set(ConsentEvent.objects.values_list("contributor", flat=True).distinct())
    for summary in Dataset.objects.values_list("summary", flat=True):
        known.update((summary or {}).get("contributors", {}).values())
    return known


class ConsentForm(forms.Form):
    """One consent given or withdrawn, for one contributor and purpose."""

    contributor = forms.CharField(
        max_length=100, strip=True, widget=forms.TextInput(attrs={"list": "known-contributors"})
    )
    purpose = forms.CharField(
        max_length=63,
        strip=True,
        initial="policy-training",
        validators=[_purpose],
        help_text=PURPOSE_HELP,
        widget=forms.TextInput(attrs={"list": "known-purposes"}),
    )
    given = forms.TypedChoiceField(
        label="Consent",
        choices=[("true", "Given"), ("false", "Withdrawn")],
        coerce=lambda v: v == "true",
        widget=forms.RadioSelect,
        error_messages={"required": "Say whether consent is given or withdrawn."},
    )
    evidence = forms.CharField(
        max_length=500,
        strip=True,
        label="Evidence reference",
        widget=forms.TextInput(attrs={"placeholder": "e.g. signed form #2024-017"}),
        error_messages={"required": "Give an evidence reference (e.g. the signed form's id)."},
    )
    new_contributor = forms.BooleanField(
        required=False,
        label="This contributor is not yet in any dataset",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        who = data.get("contributor")
        if who and not data.get("new_contributor") and who not in known_contributors():
            self.add_error(
                "contributor",
                f"Unknown contributor {who!r}: check the pseudonym, or tick "
                "'not yet in any dataset' if it is a new one.",
            )
        return data


@dataclass(frozen=True)
class ConsentRow:
    line: int
    contributor: str
    purpose: str
    given: bool
    evidence: str


class ConsentImportForm(forms.Form):
    """A CSV file ``contributor,purpose,given,evidence``; ``rows`` after validation."""

    file = forms.FileField(label="CSV file", error_messages={"required": "Choose a CSV file to import."})
    new_contributors = forms.BooleanField(required=False, label="Allow contributors not yet in any dataset")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        upload = data.get("file")
        if upload is None:
            return data
        try:
            rows, errors = self._parse(upload, allow_new=bool(data.get("new_contributors")))
        except forms.ValidationError as exc:
            self.add_error("file", exc)
            return data
        if errors:
            more = len(errors) - CSV_MAX_ERRORS
            shown = errors[:CSV_MAX_ERRORS] + ([f"… and {more} more."] if more > 0 else [])
            self.add_error(
                "file", ["Nothing was imported. Fix these lines and upload the file again:", *shown]
            )
        data["rows"] = rows
        return data

    @staticmethod
    def _parse(upload: Any, allow_new: bool) -> tuple[list[ConsentRow], list[str]]:
        if upload.size > CSV_MAX_BYTES:
            raise forms.ValidationError(f"The file is larger than {CSV_MAX_BYTES // 1024} KiB.")
        try:
            text = upload.read().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise forms.ValidationError("The file is not UTF-8 text: save it as CSV (UTF-8).") from exc
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip().lower() for h in reader.fieldnames or []]
        if sorted(header) != sorted(CSV_COLUMNS):
            raise forms.ValidationError(
                f"Line 1: the header must be exactly {','.join(CSV_COLUMNS)} "
                f"(found {','.join(header) or 'nothing'})."
            )
        reader.fieldnames = header
        known = None if allow_new else known_contributors()
        rows: list[ConsentRow] = []
        errors: list[str] = []
        seen: dict[tuple[str, str], int] = {}
        try:
            for record in reader:
                line = reader.line_num
                if len(rows) + len(errors) >= CSV_MAX_ROWS:
                    raise forms.ValidationError(f"The file has more than {CSV_MAX_ROWS} rows: split it.")
                row, problem = _row(line, record, known, seen)
                if problem:
                    errors.append(f"Line {line}: {problem}")
                else:
                    rows.append(row)
        except csv.Error as exc:
            raise forms.ValidationError(f"Line {reader.line_num}: not valid CSV ({exc}).") from exc
        if not rows and not errors:
            raise forms.ValidationError("The file has a header but no rows.")
        return rows, errors


def _row(
    line: int, record: dict, known: set[str] | None, seen: dict[tuple[str, str], int]
) -> tuple[ConsentRow | None, str | None]:
    """One CSV record as a row, or why it is refused."""
    if None in record or any(v is None for v in record.values()):
        return None, f"expected {len(CSV_COLUMNS)} columns ({','.join(CSV_COLUMNS)})."
    contributor, purpose = record["contributor"].strip(), record["purpose"].strip()
    given, evidence = record["given"].strip().lower(), record["evidence"].strip()
    if not contributor or len(contributor) > 100:
        return None, "contributor must be a pseudonym of 1-100 characters."
    if known is not None and contributor not in known:
        return None, (
            f"unknown contributor {contributor!r} (tick 'allow contributors not yet in any "
            "dataset' if it is new)."
        )
    if not re.fullmatch(PURPOSE_PATTERN, purpose):
        return None, f"purpose {purpose!r} must be {PURPOSE_HELP}."
    if given not in GIVEN | WITHDRAWN:
        return None, f"given must be true or false (or yes/no, given/withdrawn), not {record['given']!r}."
    if not evidence:
        return None, "evidence is empty: give a reference such as the signed form's id."
    if len(evidence) > 500:
        return None, "evidence is longer than 500 characters."
    key = (contributor, purpose)
    if key in seen:
        return None, f"{contributor} / {purpose} already appears on line {seen[key]}: keep one line."
    seen[key] = line
    return ConsentRow(line, contributor, purpose, given in GIVEN, evidence), None
