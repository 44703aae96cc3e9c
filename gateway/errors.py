"""Root of the gateway's errors, so callers can catch the library's or the built-in category."""

from __future__ import annotations


class GatewayError(Exception):
    """Anything the gateway itself raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """The configuration is invalid; the message names the offending field."""
