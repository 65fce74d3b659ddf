"""Errors the gateway answers with, each carrying its HTTP status."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class; ``status`` is the HTTP status the API answers with."""

    status = 500


class NotFound(GatewayError):
    status = 404


class Conflict(GatewayError):
    status = 409


class Invalid(GatewayError):
    status = 422


class AgentUnavailable(GatewayError):
    """The agent process could not be started or initialized."""

    status = 502


class NotSupported(GatewayError):
    status = 501
