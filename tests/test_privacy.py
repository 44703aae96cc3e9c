"""Privacy hygiene: the log filter, `edge diagnose`, and refused loose file permissions."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge import app
from gateway.config import check_permissions, load_config, permission_problems
from gateway.errors import ConfigError
from gateway.privacy import PrivacyFilter, Redactor, install, mask_identifier, mask_patient
from tests.e2e.helpers import GENERIC_SYSID, PATIENT, PATIENT_B, config, grant, run_until_idle

runner = CliRunner()
NIR = PATIENT.split("|")[1]  # 1850175000042
SYSTEM = PATIENT.split("|")[0]
VALUES = ("72.350", "72.100", "71.950", "58.400")  # what the generic scale sends


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _record(level: int, msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"weight 72.350 kg for {PATIENT}")
        except ValueError as error:
            exc_info = (type(error), error, error.__traceback__)
    return logging.LogRecord("edge.test", level, __file__, 1, msg, args or None, exc_info)


# -- masking ------------------------------------------------------------------------------------
def test_identifiers_keep_their_last_two_characters():
    assert mask_identifier(NIR) == "***42"
    assert mask_identifier("12345") == "***"  # too short to show anything
    assert mask_patient(PATIENT) == f"{SYSTEM}|***42"
    assert mask_identifier("***42") == "***42"  # masking twice changes nothing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"patient {PATIENT}", f"patient {SYSTEM}|***42"),
        ("urn:example:patient|demo-77 x", "urn:example:patient|***77 x"),
        ("https://ids.example/p|ABC12345", "https://ids.example/p|***45"),
        (  # a conditional search URL (httpx logs them at INFO)
            "GET https://s/R4/Observation?identifier=urn:oid:1.2.3%7C2920175000017&_count=1",
            "GET https://s/R4/Observation?identifier=urn:oid:1.2.3%7C***17&_count=1",
        ),
        ("NIR 185017512345678 INS 2920175000017", "NIR ***78 INS ***17"),
        ("corsica 185012A12345678", "corsica ***78"),
        (
            '"valueQuantity": {"value": 72.350, "unit": "kg"}',
            '"valueQuantity": {"value": ***, "unit": "kg"}',
        ),
        ("{'value': Decimal('72.350')}", "{'value': Decimal('***')}"),
        (
            "Quantity(name='body-weight', value=Decimal('72.350'), unit='kg')",
            "Quantity(name='body-weight', value=Decimal('***'), unit='kg')",
        ),
        ("PatientRef(system='urn:x', value='abcdefg')", "PatientRef(system='urn:x', value='***')"),
        ("weight 72.350 kg, 180.40 [lb_av]", "weight *** kg, *** [lb_av]"),
        ("bp 128 mm[Hg] / 82 mmHg, 16.0 kPa", "bp *** mm[Hg] / *** mmHg, *** kPa"),
        ("pulse 64 /min, spo2 97 %, 96%", "pulse *** /min, spo2 *** %, ***%"),
        ("glucose 111 mg/dL 6.2 mmol/L", "glucose *** mg/dL *** mmol/L"),
        ("temp 36.8 Cel 98.6 °F", "temp *** Cel *** °F"),
        ("bmi 23.6 kg/m2 height 1.750 m", "bmi *** kg/m2 height *** m"),
    ],
)
def test_the_redactor_masks_identifiers_and_values(text, expected):
    assert Redactor().redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "retry in 2.5 s, batch of 20 readings, port 8883, HTTP 503, 3 envelope(s)",
        "version 1.2.3 of bumble; 5 messages; took 12 ms",
        "at 2026-11-22T07:10:00+01:00 from C0:ED:6E:00:00:02 (00-1B-2C-FF-FE-3D-4E-5F)",
        "sequence 123456789012 and a 16-digit run 1234567890123456",
        "destination broker: PUBACK reason 0x10 (no matching subscribers)",
    ],
)
def test_the_redactor_leaves_operational_text_alone(text):
    assert Redactor().redact(text) == text


def test_known_identifiers_are_masked_exactly_wherever_they_are():
    redactor = Redactor(["urn:example:patient|ab12cd34ef", "urn:x|42"])
    # inside an Observation identifier, without any system next to it
    text = "identifier 0001B2CFFFE3D4E5F-ab12cd34ef-urn:example:patient-188736-123"
    assert (
        redactor.redact(text) == "identifier 0001B2CFFFE3D4E5F-***ef-urn:example:patient-188736-123"
    )
    assert redactor.redact("42 readings") == "42 readings"  # too short to be masked exactly
    assert redactor.known == {"ab12cd34ef"}


# -- the log filter -------------------------------------------------------------------------------
def test_the_filter_masks_messages_and_their_arguments_above_debug():
    redacting = PrivacyFilter(Redactor([PATIENT]))
    record = _record(logging.WARNING, "reading for %s: %s kg (%r)", NIR, "72.350", {"value": 72.35})
    assert redacting.filter(record) is True
    assert record.getMessage() == "reading for ***42: *** kg ({'value': ***})"
    info = _record(logging.INFO, "patient %(who)s", {"who": PATIENT})
    redacting.filter(info)
    assert info.getMessage() == f"patient {SYSTEM}|***42"


def test_debug_records_are_left_whole():
    record = _record(logging.DEBUG, "reading for %s: %s kg", PATIENT, "72.350")
    assert PrivacyFilter(Redactor([PATIENT])).filter(record) is True
    assert record.getMessage() == f"reading for {PATIENT}: 72.350 kg"
    assert record.args == (PATIENT, "72.350")


def test_exception_text_and_stack_are_masked():
    record = _record(logging.ERROR, "send failed", exc=True)
    record.stack_info = f"Stack (most recent call last):\n  map({PATIENT})"
    PrivacyFilter(Redactor([PATIENT])).filter(record)
    text = logging.Formatter().format(record)
    assert "ValueError: weight *** kg for" in text
    assert NIR not in text and "72.350" not in text


def test_a_record_is_never_dropped_even_when_it_cannot_be_checked():
    broken = _record(logging.WARNING, "%s and %s", NIR)  # one argument short
    assert PrivacyFilter().filter(broken) is True
    assert NIR not in broken.getMessage()

    class Exploding(Redactor):
        def redact(self, text: str) -> str:
            raise RuntimeError("bug")

    record = _record(logging.ERROR, "reading for %s", PATIENT, exc=True)
    assert PrivacyFilter(Exploding()).filter(record) is True
    assert "withheld" in record.getMessage() and record.exc_info is None


def test_each_record_is_masked_once_through_several_handlers():
    redacting = PrivacyFilter(Redactor([PATIENT]))
    record = _record(logging.INFO, "%s", PATIENT)
    redacting.filter(record)
    record.msg = "changed after the first handler"  # a second pass must not touch it
    redacting.filter(record)
    assert record.getMessage() == "changed after the first handler"


def test_installed_on_the_root_handlers_formatted_output_is_masked():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        installed = install()
        install()  # idempotent
        assert [f for f in handler.filters if isinstance(f, PrivacyFilter)] == [installed]
        log = logging.getLogger("edge.privacy-test")
        log.warning("quarantined %s: %s", PATIENT, "weight 72.350 kg")
        log.debug("debug %s", PATIENT)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    out = stream.getvalue()
    assert f"WARNING quarantined {SYSTEM}|***42: weight *** kg" in out
    assert f"DEBUG debug {PATIENT}" in out  # DEBUG: left whole


def test_the_cli_logging_setup_installs_the_filter(caplog):
    from edge import _setup_logging

    caplog.set_level(logging.INFO)
    _setup_logging(False)
    logging.getLogger("gateway.test").info("reading %s for %s", "65.700 kg", PATIENT)
    [record] = [r for r in caplog.records if r.name == "gateway.test"]
    assert record.getMessage() == f"reading *** kg for {SYSTEM}|***42"


# -- permissions ----------------------------------------------------------------------------------
def _write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def _toml(tmp_path: Path, **files: Path) -> str:
    lines = [
        "[gateway]",
        f'data_dir = "{tmp_path / "data"}"',
        "[link]",
        'backend = "bumble"',
        'emulate = ["generic-wss"]',
        "[[bindings]]",
        f'device = "{GENERIC_SYSID}"',
        "user_index = 1",
        "consent_code = 4321",
        f'patient = "{PATIENT}"',
        "[[destinations]]",
        'type = "local"',
        'name = "record"',
    ]
    if "key" in files:
        lines += [
            "[[destinations]]",
            'type = "mqtt"',
            'name = "broker"',
            'host = "broker.example.org"',
            f'ca_file = "{files["ca"]}"',
            f'cert_file = "{files["cert"]}"',
            f'key_file = "{files["key"]}"',
            'username = "gw"',
            f'password_file = "{files["password"]}"',
        ]
    if "private_key" in files:
        lines += [
            "[[destinations]]",
            'type = "fhir"',
            'name = "ehr"',
            'base_url = "https://fhir.example.org/R4"',
            "[destinations.oauth]",
            'token_url = "https://auth.example.org/token"',
            'client_id = "gw"',
            f'private_key_file = "{files["private_key"]}"',
        ]
    if "token" in files:
        lines += [
            "[[destinations]]",
            'type = "fhir"',
            'name = "other"',
            'base_url = "https://other.example.org/R4"',
            f'token_file = "{files["token"]}"',
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, Path]:
    pki = tmp_path / "pki"
    pki.mkdir()
    return {
        "ca": _write(pki / "ca.pem", "CERT", 0o644),  # public: any mode
        "cert": _write(pki / "gw.pem", "CERT", 0o644),
        "key": _write(pki / "gw.key", "KEY", 0o600),
        "password": _write(pki / "password", "hunter2-password", 0o600),
        "private_key": _write(pki / "smart.pem", "KEY", 0o600),
        "token": _write(pki / "token", "bearer-token-xyz", 0o400),
    }


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_private_files_and_a_config_only_the_owner_writes_are_accepted(tmp_path, secrets):
    path = _write(tmp_path / "edge.toml", _toml(tmp_path, **secrets), 0o644)
    cfg = load_config(path)
    assert [d.name for d in cfg.destinations] == ["record", "broker", "ehr", "other"]
    assert permission_problems(path, cfg) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_a_config_others_can_write_is_refused_with_the_fix(tmp_path, mode):
    path = _write(tmp_path / "edge.toml", _toml(tmp_path), mode)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert str(path) in message and f"mode {mode:04o}" in message
    assert f"chmod go-w {path}" in message


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize(
    ("secret", "field"),
    [
        ("key", "destinations.1.key_file"),
        ("password", "destinations.1.password_file"),
        ("private_key", "destinations.2.oauth.private_key_file"),
        ("token", "destinations.3.token_file"),
    ],
)
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_secret_file_others_can_read_is_refused_with_the_fix(
    tmp_path, secrets, secret, field, mode
):
    secrets[secret].chmod(mode)
    path = _write(tmp_path / "edge.toml", _toml(tmp_path, **secrets), 0o600)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert f"{secrets[secret]} ({field})" in message
    assert f"chmod 600 {secrets[secret]}" in message
    assert "hunter2" not in message  # the file is never read


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_a_client_secret_and_the_bridge_files_are_checked_too(tmp_path):
    secret = _write(tmp_path / "client-secret", "s3cret", 0o644)
    key = _write(tmp_path / "bridge.key", "KEY", 0o600)
    ca = _write(tmp_path / "ca.pem", "CERT", 0o644)
    text = "\n".join(
        [
            '[link]\nbackend = "bleak"',
            '[[destinations]]\ntype = "fhir"\nname = "ehr"\nbase_url = "https://f.example/R4"',
            '[destinations.oauth]\ntoken_url = "https://a.example/token"\nclient_id = "gw"',
            f'client_secret_file = "{secret}"',
            '[bridge]\nhost = "b.example"\nclient_id = "b1"\ndestination = "ehr"',
            f'ca_file = "{ca}"',
            f'cert_file = "{ca}"\nkey_file = "{key}"\npassword_file = "{secret}"\n',
        ]
    )
    path = _write(tmp_path / "edge.toml", text, 0o600)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = str(refused.value)
    assert "(destinations.0.oauth.client_secret_file)" in message
    assert "(bridge.password_file)" in message and "bridge.key_file" not in message
    secret.chmod(0o600)
    key.chmod(0o640)
    with pytest.raises(ConfigError, match=r"\(bridge\.key_file\).*chmod 600"):
        load_config(path)
    key.chmod(0o600)
    cfg = load_config(path)
    assert cfg.bridge is not None
    check_permissions(path, cfg)  # what `edge bridge`'s own loader calls
    key.chmod(0o604)
    with pytest.raises(ConfigError, match=r"\(bridge\.key_file\)"):
        check_permissions(path, cfg)


def test_a_missing_key_file_is_left_to_the_uplink(tmp_path, secrets):
    secrets["key"].unlink()
    path = _write(tmp_path / "edge.toml", _toml(tmp_path, **secrets), 0o600)
    assert load_config(path).destinations[1].name == "broker"


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_the_cli_refuses_a_loose_key_with_exit_2_and_the_fix(tmp_path, secrets):
    secrets["key"].chmod(0o644)
    path = _write(tmp_path / "edge.toml", _toml(tmp_path, **secrets), 0o644)
    code, _, err = invoke("run", "--config", str(path))
    assert code == 2
    assert "invalid configuration" in err and f"chmod 600 {secrets['key']}" in err
    path.chmod(0o666)
    code, _, err = invoke("outbox", "status", "--config", str(path))
    assert code == 2 and f"chmod go-w {path}" in err


# -- edge diagnose --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory filled by the real daemon: three weights delivered to the record."""
    tmp = tmp_path_factory.mktemp("diagnose")
    cfg = config(tmp)
    grant(cfg)
    grant(cfg, "record", PATIENT_B)
    asyncio.run(run_until_idle(cfg))
    return tmp


def _secret_free(out: str) -> None:
    for secret in (NIR, PATIENT_B.split("|")[1], *VALUES, "4321", "hunter2", "bearer-token"):
        assert secret not in out, secret


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_diagnose_prints_counts_and_no_identifier_or_value(gateway_state, secrets):
    tmp = gateway_state
    path = _write(tmp / "edge.toml", _toml(tmp, **secrets), 0o600)
    code, out, err = invoke("diagnose", "--config", str(path))
    assert code == 0, err
    _secret_free(out)
    assert "edge-gateway" in out and "bumble" in out and "paho-mqtt" in out and "python" in out
    assert f"bindings.0.patient = {SYSTEM}|***42" in out
    assert "consent_code = (set, not shown)" in out
    assert f"destinations.1.password_file = {secrets['password']}" in out  # the path, not the file
    assert "broker: mqtt" in out and "ehr: fhir" in out
    assert "readings stored: 4 (unattributed, never sent: 1)" in out
    assert "record: done=3" in out
    assert "record: 2 active, 0 revoked grant(s); 2 patient(s)" in out
    assert "***42" in out and "***17" in out
    assert "outbox.sqlite" in out and "consent.sqlite" in out
    assert f"ok       configuration {path} 0600" in out
    assert f"ok       destinations.1.key_file {secrets['key']} 0600" in out


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_diagnose_json_and_a_loose_config_is_reported_not_refused(gateway_state, secrets):
    tmp = gateway_state
    secrets["key"].chmod(0o644)
    path = _write(tmp / "loose.toml", _toml(tmp, **secrets), 0o666)
    code, out, err = invoke("diagnose", "--config", str(path), "--json")
    assert code == 0, err
    _secret_free(out)
    bundle = json.loads(out)
    assert bundle["config"]["bindings"][0]["patient"] == f"{SYSTEM}|***42"
    assert bundle["outbox"]["by_destination"] == {"record": {"done": 3}}
    assert bundle["consent"]["record"]["active"] == 2
    checks = {c["what"]: c for c in bundle["permissions"]}
    assert checks["configuration"]["status"] == "refused"
    assert f"chmod go-w {path}" in checks["configuration"]["note"]
    assert checks["destinations.1.key_file"]["status"] == "refused"
    assert checks["destinations.1.password_file"]["status"] == "ok"
    assert {f["path"] for f in bundle["files"]} >= {"outbox.sqlite", "consent.sqlite"}
    assert bundle["versions"]["pydantic"] and bundle["versions"]["os"]


def test_diagnose_without_a_config_uses_the_data_dir_and_creates_nothing(tmp_path):
    code, out, _ = invoke("diagnose", "--data-dir", str(tmp_path / "nothing"))
    assert code == 0
    assert "configuration: none given (the built-in demo)" in out
    assert "2990175000001" not in out and "***01" in out  # the demo patient, masked
    assert "missing  data_dir" in out
    assert not (tmp_path / "nothing").exists()


def test_diagnose_reports_an_invalid_config_without_its_identifiers(tmp_path):
    path = _write(
        tmp_path / "edge.toml",
        f'[link]\nbackend = "radio"\n[[bindings]]\ndevice = "AA"\npatient = "{PATIENT}"\n',
        0o600,
    )
    code, out, _ = invoke("diagnose", "--config", str(path))
    assert code == 0
    assert "INVALID: link.backend" in out and NIR not in out


def test_the_patient_inside_a_phd_observation_identifier_is_masked_unknown_or_not():
    """<device>-<patient value>-<patient system>-<code>-<time>: a bridge knows no bindings, yet
    carries every patient's identifiers."""
    from gateway.privacy import Redactor

    text = (
        "reading C47C8DFFFE6A1F02-AB123456-urn:oid:1.2.250.1.213.1.4.8-188736-840703356 and"
        " 001B2CFFFE3D4E5F-XY9876-https://hospital.example/mrn-150020-1"
    )
    masked = Redactor().redact(text)
    assert "AB123456" not in masked and "***56" in masked
    assert "XY9876" not in masked and "***76" in masked
    assert "C47C8DFFFE6A1F02-" in masked and "188736" in masked  # device and code stay


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_a_key_root_provides_to_the_service_group_is_accepted(tmp_path, monkeypatch):
    """root owns the key, mode 0640, and edge runs as a service user in the key's group (the
    ssl-cert pattern): accepted; readable by others, or edge running as root itself: refused."""
    from gateway.config import permission_problems

    key = _write(tmp_path / "gw.key", "KEY", 0o640)
    owner = os.stat(key).st_uid
    text = "\n".join(
        [
            '[link]\nbackend = "bleak"',
            f'[[destinations]]\ntype = "mqtt"\nname = "b"\nhost = "h"\nca_file = "{key}"',
            f'cert_file = "{key}"\nkey_file = "{key}"\n',
        ]
    )
    path = _write(tmp_path / "edge.toml", text, 0o600)
    cfg = load_config(path, check_permissions=False)
    real_stat = os.stat

    def owned_by_root(target, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_stat(target, *args, **kwargs)
        if str(target) == str(key):
            return os.stat_result((result.st_mode, *result[1:4], 0, *result[5:]))
        return result

    monkeypatch.setattr(os, "stat", owned_by_root)
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1000)  # a service user, not root
    assert permission_problems(path, cfg) == []
    key.chmod(0o644)
    assert [p.what for p in permission_problems(path, cfg)] == ["destinations.0.key_file"]
    key.chmod(0o640)
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # edge itself runs as root
    assert [p.what for p in permission_problems(path, cfg)] == ["destinations.0.key_file"]


def test_diagnose_only_reads(gateway_state, secrets):
    """A support bundle never migrates, rewrites or keys anything: the data files are the same
    bytes after it, and no new file appears."""
    import hashlib

    data = gateway_state / "data"

    def snapshot() -> dict[str, str]:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.iterdir())
            if p.is_file()
        }

    before = snapshot()
    path = _write(gateway_state / "edge.toml", _toml(gateway_state, **secrets), 0o600)
    code, out, err = invoke("diagnose", "--config", str(path))
    assert code == 0, err
    assert "readings stored: 4" in out
    assert snapshot() == before
