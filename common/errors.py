"""Refusals raised by services; each carries the HTTP status an API answers with."""


class ServiceError(Exception):
    """A refused request (400 unless a subclass says otherwise); the message says why."""

    status = 400


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class TooLarge(ServiceError):
    status = 413
