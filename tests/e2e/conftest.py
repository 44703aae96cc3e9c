from tests.support.mosquitto import mosquitto, mosquitto_factory  # noqa: F401
