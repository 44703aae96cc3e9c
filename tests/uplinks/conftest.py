"""Fixtures for the uplink tests: private mosquitto brokers (``tests/support/mosquitto.py``) and
a real FHIR server (``tests/support/fhir_server.py``)."""

from tests.support.fhir_server import fhir_server, fhir_server_factory, fhir_server_session
from tests.support.mosquitto import mosquitto, mosquitto_factory

__all__ = [
    "fhir_server",
    "fhir_server_factory",
    "fhir_server_session",
    "mosquitto",
    "mosquitto_factory",
]
