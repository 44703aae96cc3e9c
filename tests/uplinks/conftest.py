"""Fixtures for the uplink tests: private mosquitto brokers (see ``tests/support/mosquitto.py``)."""

from tests.support.mosquitto import mosquitto, mosquitto_factory

__all__ = ["mosquitto", "mosquitto_factory"]
