import copy
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

_FORMAT = logging.Formatter("%(levelname)s %(name)s: %(message)s")
_ROOT = Path(__file__).resolve().parents[2]
_TESTS = str(_ROOT / "tests") + "/"
_OURS = str(_ROOT) + "/"
_VENV = str(_ROOT / ".venv") + "/"


def _logged_by_the_tests(frame: Any) -> bool:
    """Whether the code of this repository nearest to the logging call is test code (a test
    helper's own HTTP client logging its search URLs, say), rather than edge's. A record from a
    thread or task with no repository frame at all (a library's) counts as edge's."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_OURS) and not name.startswith(_VENV) and name != __file__:
            return name.startswith(_TESTS)
        frame = frame.f_back
    return False


def _formatted(record: logging.LogRecord) -> str:
    """The record as a handler would write it: message with its arguments, exception, stack.
    Formatted on a copy, so nothing is cached on the record the real handlers get."""
    try:
        return _FORMAT.format(copy.copy(record))
    except Exception:  # a broken format string: check what it carries anyway
        return f"{record.msg!s} {record.args!r}"


@pytest.fixture(autouse=True)
def no_health_data_in_logs(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> Iterator[None]:
    """Nothing edge logs above DEBUG carries a test patient's identifier or a value:

    * every record created in this process while the test runs, from every logger (a record
      factory: loggers that do not propagate to the root are covered, and so are the setup and
      call phases, which ``caplog.records`` read at teardown would not be), as it was made,
      before any handler or filter (gateway.privacy's included) could mask it: edge must not log
      them in the first place, the filter is a safety net. Records the tests' own code causes
      (a helper's HTTP client logging a search URL) are not edge's and are left out;
    * the log files of the edge processes a test started (``*.log`` directly in ``tmp_path``,
      e.g. ``daemon.log``), which went through the CLI's logging set-up, filter included.
    """
    caplog.set_level(logging.DEBUG)  # every logger creates its records: all of them are checked
    created: list[str] = []
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.levelno > logging.DEBUG and not _logged_by_the_tests(sys._getframe(1)):
            created.append(_formatted(record))
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)
    leaked = [text for text in created if any(s in text for s in SECRETS)]
    for log in sorted(tmp_path.glob("*.log")):
        text = log.read_text(encoding="utf-8", errors="replace")
        leaked += [
            f"{log.name}: {line}" for line in text.splitlines() if any(s in line for s in SECRETS)
        ]
    assert not leaked, f"health data or patient identifiers logged above DEBUG: {leaked[:3]}"
