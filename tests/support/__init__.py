"""Helpers shared by test folders (real brokers, generated certificates...).

``tests.support.mosquitto`` runs a private mosquitto per test. To use its fixtures in a test
folder, import them in that folder's ``conftest.py``::

    from tests.support.mosquitto import mosquitto, mosquitto_factory  # noqa: F401

or, from code that is not a fixture, ``with mosquitto_broker(tmp_path, acl=...) as broker:``.
"""
