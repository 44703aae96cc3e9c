"""Keeping patients out of logs: masking identifiers and health values in text.

``Redactor.redact(text)`` masks, in this order:

1. the identifiers it was told about (``remember_patients``: the bindings of the loaded config),
   exactly, wherever they appear (inside an Observation identifier too);
2. ``SYSTEM|VALUE`` pairs whose system is a ``urn:`` or ``http(s)://`` URI, with ``|`` or its URL
   form ``%7C`` (a search URL): the value is masked, the system kept;
3. runs of 13 to 15 digits (INS / NIR, and anything as long: a millisecond epoch too), and the
   Corsican NIR form (``2A``/``2B`` in place of the department);
4. values of keys named ``value``/``valueQuantity``/... (``"value": 72.35``, ``value='1850...'``,
   as a FHIR fragment, a dict or a dataclass repr shows them) and ``Decimal('72.350')``;
5. numbers followed by a unit of a health measurement (``72.350 kg``, ``128 mm[Hg]``, ``97 %``,
   ``64 /min``, ``111 mg/dL``, ``36.8 Cel``...).

An identifier keeps its last two characters (``***42``: enough to tell two patients apart in a
support conversation, not enough to find one); a value keeps nothing but its unit (``*** kg``).

``PrivacyFilter`` applies this to every log record above DEBUG that reaches a handler it is
installed on (``install``, called by the CLI's logging set-up): the message is formatted first
(``msg % args``), then masked, so arguments are covered; the exception text and stack too. A
record is never dropped. DEBUG records are left alone: DEBUG is what a developer turns on, on
their own machine, to see exactly what a device sent; it is never on in production.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

MASK = "***"

_SEP = r"(?:\||%7[Cc])"
# a system: urn:... (OIDs, urn:example:...) or an http(s) URI, possibly URL-encoded
_SYSTEM = r"(?:urn(?::|%3[Aa])[^\s|'\"<>&=?,;]*|https?(?::|%3[Aa])[^\s|'\"<>]+)"
_VALUE_CHARS = r"[^\s|'\",;:&)\]}<>]"  # a value ends before a delimiter or a sentence's dot
_PAIR = re.compile(
    rf"(?P<system>{_SYSTEM})(?P<sep>{_SEP})(?P<value>{_VALUE_CHARS}*(?:(?!\.){_VALUE_CHARS}))"
)
# The PHD Observation identifier: <device EUI-64>-<patient value>-<patient system>-<code>-<time>
# (mappers/phd.py): the value stands before its system, where the pair pattern cannot see it.
_OBSERVATION_ID = re.compile(
    r"(?P<device>(?<![0-9A-Za-z])[0-9A-Fa-f]{16})-(?P<value>[^\s|]+?)-(?P<system>urn:|https?:)"
)
_LONG_NUMBER = re.compile(
    r"(?<![0-9])(?:[0-9]{13,15}|[0-9]{5}2[ABab][0-9]{6}(?:[0-9]{2})?)(?![0-9])"
)
_NUMBER = r"[-+]?[0-9]+(?:[.,][0-9]+)?(?:[eE][-+]?[0-9]+)?"
_VALUE_KEY = re.compile(
    r"(?P<key>(?<![A-Za-z_])[\"']?value(?:Quantity|Integer|Decimal|String)?[\"']?\s*[:=]\s*)"
    rf"(?P<value>Decimal\([\"'][^\"']*[\"']\)|{_NUMBER}|\"[^\"]*\"|'[^']*')"
)
_DECIMAL = re.compile(r"Decimal\([\"'][^\"']*[\"']\)")
_UNITS = (
    r"mm\[Hg\]|mmHg|kPa|kg/m2|kg/m²|kg|\[lb_av\]|lbs|lb|mg/dL|mg/dl|mmol/L|mmol/l|g/dL"
    r"|Cel|°C|degC|\[degF\]|°F|degF|%|/min|\{beats\}/min|bpm|cm|m|Ohm|kJ|kcal"
)
_MEASURE = re.compile(
    rf"(?<![\w.])(?P<number>{_NUMBER})(?P<space>\s?)(?P<unit>{_UNITS})(?![\w\[/²])"
)
_DIGIT = re.compile(r"[0-9]")


def mask_identifier(value: str) -> str:
    """``1850175000042`` -> ``***42``; short values are masked whole."""
    if value.startswith(MASK):
        return value
    return MASK + value[-2:] if len(value) >= 6 else MASK


def mask_patient(reference: str) -> str:
    """``SYSTEM|VALUE`` -> ``SYSTEM|***42`` (the system says which register, not who)."""
    system, sep, value = reference.rpartition("|")
    if not sep:
        return mask_identifier(reference)
    return f"{system}|{mask_identifier(value)}"


class Redactor:
    """Masks identifiers and health values in text; thread-safe, cheap when nothing matches."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._known_re: re.Pattern[str] | None = None
        self.remember(known)

    def remember(self, identifiers: Iterable[str]) -> None:
        """Mask these exactly from now on: patient values (``VALUE``, or ``SYSTEM|VALUE``, of
        which the value is kept). Values shorter than 4 characters are left to the patterns:
        masking every ``42`` would make logs unreadable."""
        new = set()
        for identifier in identifiers:
            value = identifier.rpartition("|")[2].strip()
            if len(value) >= 4 and value not in self._known:
                new.add(value)
        if not new:
            return
        with self._lock:
            self._known |= new
            alternatives = []
            for value in sorted(self._known, key=len, reverse=True):
                escaped = re.escape(value)
                # short values only as whole words (a 4-digit value must not eat years)
                if len(value) < 8:
                    escaped = rf"(?<![0-9A-Za-z]){escaped}(?![0-9A-Za-z])"
                alternatives.append(escaped)
            self._known_re = re.compile("|".join(alternatives))

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self._known)

    def redact(self, text: str) -> str:
        known = self._known_re
        if known is not None:
            text = known.sub(lambda m: mask_identifier(m.group(0)), text)
        if "|" in text or "%7" in text:
            text = _PAIR.sub(_mask_pair, text)
        if "urn:" in text or "http" in text:
            text = _OBSERVATION_ID.sub(_mask_observation_id, text)
        if "value" in text:
            text = _VALUE_KEY.sub(_mask_value, text)
        if not _DIGIT.search(text):
            return text
        text = _LONG_NUMBER.sub(lambda m: mask_identifier(m.group(0)), text)
        text = _DECIMAL.sub(f"Decimal('{MASK}')", text)
        return _MEASURE.sub(lambda m: f"{MASK}{m.group('space')}{m.group('unit')}", text)

    def redact_tree(self, data: Any) -> Any:
        """Every string (and dict key) of a JSON-like structure, redacted."""
        if isinstance(data, str):
            return self.redact(data)
        if isinstance(data, dict):
            return {self.redact_tree(k): self.redact_tree(v) for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.redact_tree(v) for v in data]
        return data


def _mask_pair(match: re.Match[str]) -> str:
    return f"{match.group('system')}{match.group('sep')}{mask_identifier(match.group('value'))}"


def _mask_observation_id(match: re.Match[str]) -> str:
    value = mask_identifier(match.group("value"))
    return f"{match.group('device')}-{value}-{match.group('system')}"


def _mask_value(match: re.Match[str]) -> str:
    value = match.group("value")
    if MASK in value:
        return match.group(0)
    if value.startswith("Decimal("):
        return f"{match.group('key')}Decimal('{MASK}')"
    quote = value[0] if value[0] in "\"'" else ""
    return f"{match.group('key')}{quote}{MASK}{quote}"


# The process's redactor: the CLI's log filter and `edge diagnose` share what config taught it.
REDACTOR = Redactor()


def remember_patients(patients: Iterable[str]) -> None:
    """Tell the process-wide redactor the patients' identifiers (``SYSTEM|VALUE``)."""
    REDACTOR.remember(patients)


def redact(text: str) -> str:
    return REDACTOR.redact(text)


_FORMATTER = logging.Formatter()
_DONE = "_edge_redacted"


class PrivacyFilter(logging.Filter):
    """A handler filter masking identifiers and values in records above DEBUG; never drops one.

    The record is changed in place (``msg`` becomes the formatted, masked message and ``args``
    is emptied; ``exc_text`` and ``stack_info`` are masked too) and marked, so every handler
    after the first sees the masked record and none masks it twice.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or REDACTOR

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or getattr(record, _DONE, False):
            return True
        try:
            try:
                message = record.getMessage()
            except Exception:  # a broken format string: keep what it had, masked
                message = f"{record.msg!s} {record.args!r}"
            record.msg = self.redactor.redact(message)
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = _FORMATTER.formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.redactor.redact(record.exc_text)
            if record.stack_info:
                record.stack_info = self.redactor.redact(record.stack_info)
        except Exception:  # never drop a record, never let an unmasked one through
            record.msg = "(log message withheld: it could not be checked for patient data)"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        setattr(record, _DONE, True)
        return True


def install(filter_: PrivacyFilter | None = None) -> PrivacyFilter:
    """Put the filter on every handler of the root logger (and Python's last-resort handler,
    which prints warnings when no handler is configured). Idempotent."""
    installed = filter_ or PrivacyFilter()
    handlers = [*logging.getLogger().handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, PrivacyFilter) for f in handler.filters):
            handler.addFilter(installed)
    return installed
