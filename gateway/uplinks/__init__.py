"""Destinations a reading can be delivered to: the local record, an MQTT broker, a FHIR server."""
