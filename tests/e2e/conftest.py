import logging

import pytest

from tests.e2e.helpers import PATIENT, PATIENT_B
from tests.support.fhir_server import (  # noqa: F401
    fhir_server,
    fhir_server_factory,
    fhir_server_session,
)
from tests.support.mosquitto import mosquitto, mosquitto_factory  # noqa: F401

# Values the emulated scales send and the test patients' identifiers: none may reach a log
# record above DEBUG (messages and their arguments, as a log handler would format them).
SECRETS = (
    PATIENT.split("|")[1],
    PATIENT_B.split("|")[1],
    "72.350",
    "72.100",
    "58.400",
    "71.950",
    "180.40",
    "65.700",
    "70.000",
)


@pytest.fixture(autouse=True)
def no_health_data_in_logs(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    yield
    leaked = [
        record.getMessage()
        for record in caplog.records
        if record.levelno > logging.DEBUG and any(s in record.getMessage() for s in SECRETS)
    ]
    assert not leaked, f"health data or patient identifiers logged above DEBUG: {leaked[:3]}"
