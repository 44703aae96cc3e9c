"""The patient's consent: default deny, checked before queueing and again before each send."""

from gateway.consent.fhir import Consent, ConsentFormatError, build_consent, parse_consent
from gateway.consent.store import ConsentStore, Decision, Grant, StoredConsent, SyncState

__all__ = [
    "Consent",
    "ConsentFormatError",
    "ConsentStore",
    "Decision",
    "Grant",
    "StoredConsent",
    "SyncState",
    "build_consent",
    "parse_consent",
]
