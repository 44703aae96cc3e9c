"""The ``[bridge]`` section: errors name the field; ``edge bridge`` exits 2 on a bad config."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edge import app
from gateway.bridge import dead_letter_topic, load_bridge_config, subscription_filter
from gateway.errors import ConfigError

GOOD = """
[bridge]
host = "mqtt.example.org"
client_id = "edge-bridge-1"
ca_file = "ca.pem"
destination = "record"
{extra}

[[destinations]]
type = "fhir"
name = "record"
base_url = "https://fhir.example.org/R4"

[[destinations]]
type = "local"
name = "here"
"""


def write(tmp_path, text: str):
    path = tmp_path / "bridge.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_bridge_config_needs_no_link_and_has_sane_defaults(tmp_path):
    config = load_bridge_config(write(tmp_path, GOOD.format(extra="")))
    section = config.bridge
    assert section is not None
    assert section.port == 8883 and section.receive_maximum == 100
    assert subscription_filter(section) == "$share/edge-bridge/edge/+/readings/+"
    assert dead_letter_topic(section, "GW", "weight") == "edge/GW/dead-letter/weight"
    other = load_bridge_config(
        write(tmp_path, GOOD.format(extra='dead_letter_prefix = "dlq/"')), client_id="two"
    )
    assert other.bridge is not None and other.bridge.client_id == "two"
    assert dead_letter_topic(other.bridge, "GW", "weight") == "dlq/GW/dead-letter/weight"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("port = 70000", "bridge.port"),
        ('group = "a/b"', "bridge.group"),
        ('topic_prefix = "edge/#"', "bridge.topic_prefix"),
        ("receive_maximum = 0", "bridge.receive_maximum"),
        ("linger = -1", "bridge.linger"),
        ('colour = "blue"', "bridge.colour"),
        ('cert_file = "c.pem"', "cert_file and key_file go together"),
    ],
)
def test_errors_name_the_field(tmp_path, extra, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_bridge_config(write(tmp_path, GOOD.format(extra=extra)))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (
            GOOD.format(extra="").replace('destination = "record"', 'destination = "nope"'),
            "bridge.destination: no destination named 'nope'",
        ),
        (
            GOOD.format(extra="").replace('destination = "record"', 'destination = "here"'),
            "bridge.destination: 'here' is a local destination",
        ),
        (GOOD.format(extra="").replace('ca_file = "ca.pem"', ""), "ca_file is required"),
        (GOOD.format(extra="").replace('client_id = "edge-bridge-1"', ""), "bridge.client_id"),
        ('[link]\nbackend = "bleak"\n', "the [bridge] section is missing"),
    ],
)
def test_whole_file_errors_name_the_field(tmp_path, text, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("[", r"\[")):
        load_bridge_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD.format(extra="port = 0"), "bridge.port"),
        (GOOD.format(extra="").replace('n = "record"', 'n = "elsewhere"'), "bridge.destination"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_edge_bridge_with_a_bad_config_exits_2(tmp_path, text, field):
    result = CliRunner().invoke(app, ["bridge", "--config", str(write(tmp_path, text))])
    assert result.exit_code == 2
    assert "invalid configuration" in result.stderr and field in result.stderr


def test_edge_bridge_needs_a_config():
    result = CliRunner().invoke(app, ["bridge"], env={"EDGE_CONFIG": ""})
    assert result.exit_code == 2 and "--config" in result.stderr


def test_a_bridge_key_readable_by_others_is_refused(tmp_path):
    from gateway.bridge import load_bridge_config
    from gateway.errors import ConfigError

    key = tmp_path / "bridge.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n", encoding="utf-8")
    key.chmod(0o644)
    (tmp_path / "cert.pem").write_text("cert", encoding="utf-8")
    (tmp_path / "ca.pem").write_text("ca", encoding="utf-8")
    config = tmp_path / "bridge.toml"
    config.write_text(
        f"""
[bridge]
host = "broker.example.org"
client_id = "bridge-1"
destination = "record"
ca_file = "{tmp_path / "ca.pem"}"
cert_file = "{tmp_path / "cert.pem"}"
key_file = "{key}"

[[destinations]]
type = "fhir"
name = "record"
base_url = "https://fhir.example.org/R4"
""",
        encoding="utf-8",
    )
    config.chmod(0o600)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_bridge_config(config)
    key.chmod(0o600)
    assert load_bridge_config(config).bridge is not None
