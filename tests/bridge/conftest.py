"""Fixtures for the bridge tests: private mosquitto brokers (``tests/support/mosquitto.py``), the
real FHIR server (``tests/support/fhir_server.py``), and a check that no health value or patient
identifier reaches a log record above DEBUG."""

import logging

import pytest

from tests.bridge.helpers import SECRETS
from tests.support.fhir_server import fhir_server, fhir_server_factory, fhir_server_session
from tests.support.mosquitto import mosquitto, mosquitto_factory

__all__ = [
    "fhir_server",
    "fhir_server_factory",
    "fhir_server_session",
    "mosquitto",
    "mosquitto_factory",
]


@pytest.fixture(autouse=True)
def no_health_data_in_logs(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    yield
    leaked = [
        record.getMessage()
        for record in caplog.records
        if record.levelno > logging.DEBUG
        and not record.name.startswith("httpx")  # the tests' own searches, by identifier
        and any(s in record.getMessage() for s in SECRETS)
    ]
    assert not leaked, f"health data or patient identifiers logged above DEBUG: {leaked[:3]}"
