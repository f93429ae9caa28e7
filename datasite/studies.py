"""A study's code request at this site: the latest, the approved one, its plan and verified code."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from common.errors import Forbidden, NotFound
from common.protocol import CodeBundle, Plan, bundle_sha256
from datasite.models import CodeRequest


def latest_request(study: str) -> CodeRequest:
    request = CodeRequest.objects.filter(study=study).order_by("-version").first()
    if request is None:
        raise NotFound(f"no code request for study {study}")
    return request


def approved_request(study: str) -> CodeRequest:
    request = latest_request(study)
    if request.status != CodeRequest.Status.APPROVED:
        raise Forbidden(f"study {study} is not approved at this site (status: {request.status})")
    return request


def plan_of(request: CodeRequest) -> Plan:
    return Plan.model_validate(request.plan)


def code_bundle(request: CodeRequest) -> CodeBundle:
    return CodeBundle.model_validate(request.code)


def verified_code(request: CodeRequest) -> dict[str, Any]:
    """The stored code bundle in canonical form, refused unless it hashes to the approved SHA-256.

    What the trainer builds (and, for a module, executes) is this dict and nothing else."""
    try:
        code = code_bundle(request)
    except ValidationError as exc:
        raise Forbidden(f"the stored code bundle is invalid: {exc.errors()[0]['msg']}") from exc
    if bundle_sha256(code) != request.code_sha256:
        raise Forbidden("the stored code bundle no longer matches its approved SHA-256")
    return code.model_dump()
