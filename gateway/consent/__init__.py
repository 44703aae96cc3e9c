"""The patient's consent: default deny, checked before queueing and again before each send."""

from gateway.consent.store import ConsentStore, Decision, Grant

__all__ = ["ConsentStore", "Decision", "Grant"]
