"""Detached Ed25519 signatures of JSON reports, and their verification against the audit chain.

The signature covers the canonical JSON (:func:`common.signing.canonical_json`: sorted keys,
no whitespace) of the report, so the file itself may be pretty-printed. The ``.sig`` file holds
the base64 signature on one line. A report verifies when

1. it has the known schema and names a public key, and the signature verifies under that key;
2. that key is this node's signing key (at a node with a folder), and the key that signed the
   audit event the report names as head;
3. the head hash it names is an event of this node's audit chain, and the chain verifies up to
   and including that event (a problem *after* it is reported as a note, not a failure).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit import trail
from audit.models import GENESIS_HASH, AuditEvent
from common.files import atomic_write
from common.signing import sign, verify
from compliance.reports import SCHEMA

SIG_SUFFIX = ".sig"


def sign_report(report: dict[str, Any]) -> str:
    """Base64 Ed25519 signature of the report's canonical JSON, with the node's key."""
    return sign(trail.signing_key(), report)


def report_bytes(report: dict[str, Any]) -> bytes:
    """The report as a human-readable JSON file (the signature does not depend on the layout)."""
    return (json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def write_signed(report: dict[str, Any], path: Path) -> tuple[Path, Path]:
    """Write ``path`` and ``path.sig`` atomically; return both paths."""
    sig_path = path.with_name(path.name + SIG_SUFFIX)
    atomic_write(path, report_bytes(report))
    atomic_write(sig_path, (sign_report(report) + "\n").encode())
    return path, sig_path


@dataclass
class Verification:
    """The outcome of :func:`verify_report`: ``problems`` empty means valid."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    head_seq: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, report: dict[str, Any] | None = None) -> str:
        if not self.ok:
            return "INVALID: " + "; ".join(self.problems)
        node = ((report or {}).get("node") or {}).get("name", "?")
        head = ((report or {}).get("chain") or {}).get("head_hash", "?")
        text = f"valid: signed by node {node}; audit head {head} (#{self.head_seq}) is in the chain"
        return text + "".join(f"; note: {n}" for n in self.notes)


def load_report(data: bytes | str) -> dict[str, Any]:
    """Parse a report file; ValueError when it is not a JSON object."""
    report = json.loads(data)
    if not isinstance(report, dict):
        raise ValueError("a report is a JSON object")
    return report


def verify_report(report: dict[str, Any], signature: str) -> Verification:
    """Check the signature, the signer and that the head the report names is in the chain."""
    result = Verification()
    if report.get("schema") != SCHEMA:
        result.problems.append(f"unknown schema {report.get('schema')!r} (expected {SCHEMA})")
        return result
    key = (report.get("node") or {}).get("public_key") or ""
    try:
        signed = bool(key) and verify(key, report, signature.strip())
    except (TypeError, ValueError) as exc:  # not canonical-JSON-able (NaN), malformed key
        result.problems.append(f"signature cannot be checked: {exc}")
        return result
    if not signed:
        result.problems.append("signature does not verify: the report was modified, or signed by another key")
        return result
    own = trail.node_public_key()
    if own and key != own:
        result.problems.append("the report is signed by another key than this node's signing key")
    _check_head(report, key, result)
    return result


def _check_head(report: dict[str, Any], key: str, result: Verification) -> None:
    head = (report.get("chain") or {}).get("head_hash") or ""
    if head == GENESIS_HASH:
        result.head_seq = 0
        return
    event = AuditEvent.objects.filter(hash=head).first()
    if event is None:
        result.problems.append(f"audit head {head} is not in this node's audit chain")
        return
    result.head_seq = event.seq
    if event.signer_key != key:
        result.problems.append(f"audit head #{event.seq} was signed by another key than the report")
    chain = trail.verify_chain()
    if not chain.ok:
        if chain.problem_seq is not None and chain.problem_seq <= event.seq:
            result.problems.append(f"audit chain is broken before the report's head: {chain.first_problem}")
        else:
            result.notes.append(f"the chain is broken after the report's head: {chain.first_problem}")
