"""The one error the mappers raise."""

from __future__ import annotations


class MappingError(ValueError):
    """A reading that cannot be turned into valid FHIR (unknown code, bad unit, naive time...).

    Messages name the offending field and rule only: they never carry a measured value or a
    patient identifier, because they end up in logs and in quarantine reasons.
    """
