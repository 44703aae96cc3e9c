"""The daemon's one typed configuration (TOML), validated strictly; read once, never rewritten.

A bad field raises ``ConfigError`` whose message names it (``destinations.1.port: ...``); the CLI
turns that into exit code 2. With no file at all, ``demo_config`` is the embedded default: emulated
scales, a demo patient, the local record.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drivers.models import PatientRef, normalize_device
from gateway.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Strict):
    data_dir: Path = Path("edge-data")
    timezone: str | None = None  # IANA name; default: the host's local zone
    time_sync: Literal["none", "ntpv3", "ntpv4", "sntpv4", "gps"] = "sntpv4"


_ADDRESS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")


class LinkSection(_Strict):
    backend: Literal["bumble", "bleak"] = "bumble"
    transport: str | None = None  # bumble HCI transport, e.g. "tcp-client:127.0.0.1:9000", "usb:0"
    adapter: str | None = None  # bleak adapter, e.g. "hci0"
    emulate: list[str] = []  # firmware profile ids to emulate in-process (demo, makers)
    devices: list[str] = []  # only these addresses (empty: any device with a supported service)
    scan_seconds: float = Field(default=1.5, gt=0)
    idle_timeout: float = Field(default=5.0, gt=0)
    # Passkeys of devices that display one when pairing (address -> the 6 digits shown); other
    # devices that require pairing bond Just Works. Bonds are kept in <data_dir>/bonds.json.
    passkeys: dict[str, int] = {}

    @field_validator("passkeys")
    @classmethod
    def _passkeys(cls, value: dict[str, int]) -> dict[str, int]:
        for address, passkey in value.items():
            if not _ADDRESS.fullmatch(address):
                raise ValueError(f"{address!r} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)")
            if not 0 <= passkey <= 999_999:
                raise ValueError(f"the passkey for {address} must have at most 6 digits")
        return {address.upper(): passkey for address, passkey in value.items()}

    @model_validator(mode="after")
    def _one_radio(self) -> LinkSection:
        if self.backend == "bumble" and not self.transport and not self.emulate:
            raise ValueError("bumble needs a transport or emulated devices (emulate = [...])")
        if self.backend == "bleak" and (self.transport or self.emulate):
            raise ValueError("bleak uses the host adapter: transport/emulate apply to bumble only")
        return self


class BindingSection(_Strict):
    device: str  # EUI-64 System ID or Bluetooth address
    patient: str  # SYSTEM|VALUE
    user_index: int | None = Field(default=None, ge=0, le=254)
    # multi-user devices (User Data Service): the user's 4-digit consent code, which the gateway
    # gives the device before it releases that user's measurements
    consent_code: int | None = Field(default=None, ge=0, le=9999)

    @field_validator("patient")
    @classmethod
    def _patient(cls, value: str) -> str:
        PatientRef.parse(value)
        return value

    @model_validator(mode="after")
    def _consent_code_needs_a_user(self) -> BindingSection:
        if self.consent_code is not None and self.user_index is None:
            raise ValueError("consent_code belongs to one user: give user_index too")
        return self


class LocalDestination(_Strict):
    type: Literal["local"]
    name: str
    path: Path | None = None  # default: <data_dir>/record.sqlite


ProfileSet = Literal["phd", "fr-mesures"]
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


class _Mapped(_Strict):
    """Destinations that take FHIR: which profile set the readings are mapped to.

    ``phd``: HL7 PHD IG + R4 vital signs. ``fr-mesures``: ANS "Mesures de santé" (Mon espace
    santé): one Observation per transaction, ``meta.source`` = ``urn:oid:<solution_oid>``.
    """

    profile_set: ProfileSet = "phd"
    solution_oid: str | None = None  # the solution's OID (or a sub-OID), for fr-mesures

    @model_validator(mode="after")
    def _solution(self) -> _Mapped:
        if self.solution_oid is not None and not _OID.fullmatch(self.solution_oid):
            raise ValueError("solution_oid must be a dotted OID such as 1.2.250.1.999.1")
        if self.profile_set == "fr-mesures" and self.solution_oid is None:
            raise ValueError("profile_set = 'fr-mesures' needs solution_oid (meta.source)")
        return self


class MqttDestination(_Mapped):
    type: Literal["mqtt"]
    name: str
    host: str
    port: int = Field(default=8883, ge=1, le=65535)
    client_id: str | None = None  # default: edge-<gateway id>; must be stable
    topic_prefix: str = "edge"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    allow_plaintext: bool = False  # only for tests on loopback: readings travel unencrypted
    # a PUBACK "no matching subscribers" (0x10) means the broker dropped the reading: retry it
    # until the consumer's subscription exists (false: a broker whose consumers come and go)
    require_subscriber: bool = True

    @model_validator(mode="after")
    def _tls(self) -> MqttDestination:
        if self.ca_file is None and not self.allow_plaintext:
            raise ValueError("ca_file is required (TLS); allow_plaintext = true only for testing")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class OAuthSection(_Strict):
    """OAuth2 client credentials (SMART Backend Services): a client secret or a private key."""

    token_url: str
    client_id: str
    client_secret_file: Path | None = None
    private_key_file: Path | None = None  # PEM, RSA (RS384) or P-384 (ES384): private_key_jwt
    key_id: str | None = None  # the JWK "kid" the server knows the public key by
    scope: str | None = None  # e.g. "system/Observation.write system/Device.write"

    @model_validator(mode="after")
    def _one_credential(self) -> OAuthSection:
        if (self.client_secret_file is None) == (self.private_key_file is None):
            raise ValueError("give exactly one of client_secret_file and private_key_file")
        if not self.token_url.startswith("https://"):
            raise ValueError("token_url must be https://")
        return self


class FhirDestination(_Mapped):
    """A FHIR R4 server over HTTPS: transaction Bundles of up to ``bundle_size`` readings."""

    type: Literal["fhir"]
    name: str
    base_url: str  # e.g. https://fhir.example.org/R4
    bundle_size: int = Field(default=20, ge=1, le=500)
    ca_file: Path | None = None  # default: the system's trusted CAs; verification is always on
    cert_file: Path | None = None  # client certificate (mutual TLS)
    key_file: Path | None = None
    token_file: Path | None = None  # a bearer token, read again after every 401
    oauth: OAuthSection | None = None  # or OAuth2 client credentials
    timeout: float = Field(default=30.0, gt=0)
    allow_plaintext: bool = False  # only for tests: http:// sends readings unencrypted
    # fr-mesures only (the server has no conditional create for Observations): look each
    # Observation up by its identifier before every send ("always": also protects against a
    # second gateway reading the same device), or only before a resend ("resend")
    search_before_send: Literal["always", "resend"] = "always"

    @model_validator(mode="after")
    def _https(self) -> FhirDestination:
        if not self.base_url.startswith("https://") and not self.allow_plaintext:
            raise ValueError("base_url must be https:// (allow_plaintext = true only for testing)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.token_file is not None and self.oauth is not None:
            raise ValueError("token_file and oauth exclude each other")
        return self


Destination = Annotated[
    LocalDestination | MqttDestination | FhirDestination, Field(discriminator="type")
]


class OutboxSection(_Strict):
    batch: int = Field(default=20, ge=1, le=500)
    retry_base: float = Field(default=1.0, gt=0)
    retry_max: float = Field(default=300.0, gt=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    consent_poll: float = Field(default=1.0, gt=0)
    # readings waiting for a consent that does not come are dropped after this many days
    # (purged, audited); none: kept until consent arrives
    consent_retention_days: float | None = Field(default=30.0, gt=0)


_TOPIC_LEVEL_FORBIDDEN = frozenset("/+#\x00")


class BridgeSection(_Strict):
    """``edge bridge``: readings from MQTT (a shared subscription) into a fhir destination.

    Each bridge process needs its own stable ``client_id``: the broker keeps that client's
    session (its share of the subscription, unacknowledged messages) while it is away.
    """

    host: str
    port: int = Field(default=8883, ge=1, le=65535)
    client_id: str = Field(min_length=1, max_length=128)
    group: str = "edge-bridge"  # the shared subscription's group ($share/<group>/...)
    topic_prefix: str = "edge"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    allow_plaintext: bool = False  # only for tests on loopback: readings travel unencrypted
    destination: str  # name of a fhir destination of this config
    dead_letter_prefix: str | None = None  # default: topic_prefix
    linger: float = Field(default=0.2, ge=0, le=10)  # wait for more readings to fill a bundle
    receive_maximum: int = Field(default=100, ge=1, le=65535)  # unacknowledged messages at once
    session_expiry: int = Field(default=604_800, ge=60, le=4_294_967_295)  # seconds
    keepalive: int = Field(default=30, ge=5, le=65535)
    retry_base: float = Field(default=1.0, gt=0)
    retry_max: float = Field(default=60.0, gt=0)
    drain_timeout: float = Field(default=10.0, ge=0)  # on SIGTERM: time to finish what is begun
    # the consent gate (gateway/bridge_consent.py): each reading's patient asked again, right
    # before the write, from the record server's Consents (fetched when older than
    # consent_refresh seconds, cached consent_cache_hours); off only where the record server
    # enforces consent itself
    check_consent: bool = True
    consent_refresh: float = Field(default=900.0, ge=0)
    consent_cache_hours: float = Field(default=24.0, gt=0)

    @field_validator("group")
    @classmethod
    def _group(cls, value: str) -> str:
        if not value or _TOPIC_LEVEL_FORBIDDEN & set(value):
            raise ValueError("group must be one topic level without wildcards")
        return value

    @field_validator("topic_prefix", "dead_letter_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.rstrip("/")
        if not value or {"+", "#", "\x00"} & set(value) or value.startswith("$"):
            raise ValueError("must be a non-empty topic prefix without wildcards or a leading $")
        return value

    @model_validator(mode="after")
    def _tls(self) -> BridgeSection:
        if self.ca_file is None and not self.allow_plaintext:
            raise ValueError("ca_file is required (TLS); allow_plaintext = true only for testing")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.retry_max < self.retry_base:
            raise ValueError("retry_max must not be below retry_base")
        if self.check_consent and self.consent_refresh >= self.consent_cache_hours * 3600:
            raise ValueError(
                "consent_refresh must be shorter than consent_cache_hours: a patient's cached"
                " Consents would expire while still taken as fresh, and a deny for want of an"
                " answer would be taken as final"
            )
        return self


class ConsentSection(_Strict):
    """Consents kept on the record server: the daemon syncs them itself, before its cached copy
    expires (offline beyond ``cache_hours``, the answer is deny)."""

    sync_from: str | None = None  # a fhir destination whose Consent resources decide too
    sync_every_minutes: float = Field(default=60.0, gt=0)
    cache_hours: float = Field(default=24.0, gt=0)

    @model_validator(mode="after")
    def _refresh_before_expiry(self) -> ConsentSection:
        if self.sync_from is not None and self.sync_every_minutes >= self.cache_hours * 60:
            raise ValueError(
                "sync_every_minutes must be shorter than cache_hours: the cached consents"
                " would expire between two syncs and every reading would wait"
            )
        return self


class Config(_Strict):
    gateway: GatewaySection = GatewaySection()
    link: LinkSection
    bindings: list[BindingSection] = []
    destinations: list[Destination] = []
    outbox: OutboxSection = OutboxSection()
    consent: ConsentSection = ConsentSection()
    show_readings: bool = False  # print each reading on stdout (demo); never goes to logs
    bridge: BridgeSection | None = None  # `edge bridge`: MQTT -> one of the fhir destinations

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        names = [d.name for d in self.destinations]
        if len(names) != len(set(names)):
            raise ValueError("destination names must be unique")
        return self

    @model_validator(mode="after")
    def _fr_mesures_patients(self) -> Config:
        """Mon espace santé knows a patient by the pairing authority's OID and the idPe."""
        if any(getattr(d, "profile_set", "phd") == "fr-mesures" for d in self.destinations):
            for i, b in enumerate(self.bindings):
                system = PatientRef.parse(b.patient).system
                if not (system.startswith("urn:oid:") and _OID.fullmatch(system[8:])):
                    raise ValueError(
                        f"bindings.{i}.patient: a fr-mesures destination needs the patient as"
                        " urn:oid:<pairing authority OID>|<idPe>"
                    )
        return self

    @model_validator(mode="after")
    def _fhir_destinations_named(self) -> Config:
        """The bridge writes to, and consent syncs from, a fhir destination of this file."""
        named = {
            "consent.sync_from": self.consent.sync_from,
            "bridge.destination": self.bridge.destination if self.bridge else None,
        }
        for where, name in named.items():
            if name is None:
                continue
            found = next((d for d in self.destinations if d.name == name), None)
            if found is None:
                raise ValueError(f"{where}: no destination named {name!r}")
            if not isinstance(found, FhirDestination):
                raise ValueError(
                    f"{where}: {name!r} is a {found.type} destination, not a fhir destination"
                )
        return self

    @model_validator(mode="after")
    def _multi_user_devices_bind_users_only(self) -> Config:
        """A device with consent codes is multi-user: a device-wide binding next to them would
        hand one user's readings to another patient."""
        coded = [b for b in self.bindings if b.consent_code is not None]
        multi_user = {normalize_device(b.device) for b in coded}
        for b in self.bindings:
            if b.user_index is None and normalize_device(b.device) in multi_user:
                raise ValueError(
                    f"bindings: device {b.device} has users with consent codes; bind each"
                    " user with user_index, not the whole device"
                )
        return self


def _format(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_config(data: dict[str, Any], *, base: Path | None = None) -> Config:
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc)) from exc
    if base is not None and not config.gateway.data_dir.is_absolute():
        gateway = config.gateway.model_copy(update={"data_dir": base / config.gateway.data_dir})
        config = config.model_copy(update={"gateway": gateway})
    return config


def read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML, or a ``ConfigError`` saying why it cannot be read."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def load_config(path: Path, *, check_permissions: bool = True) -> Config:
    """Read, validate and check a configuration file.

    With ``check_permissions`` (always, except for ``edge diagnose``, which reports instead),
    a configuration others can write, or a key or secret file it names that others can read,
    is refused (``permission_problems``). The bindings' patients are given to the log filter
    (``gateway.privacy``), which masks them exactly from then on.
    """
    data = read_toml(path)
    if check_permissions:
        _refuse(permission_problems(path))  # before parsing: a tampered file is not interpreted
    config = parse_config(data, base=path.parent)
    if check_permissions:
        _refuse(permission_problems(None, config))
    from gateway.privacy import remember_patients

    remember_patients(b.patient for b in config.bindings)
    return config


# -- file permissions ------------------------------------------------------------------------
# Key and secret files: nobody but the owner may read them. Certificates and CA files are public
# and not checked. The configuration itself may be readable (it names files, not secrets, apart
# from consent codes and passkeys: `edge diagnose` warns) but not writable by others: whoever can
# change it can bind a device to another patient or send readings to their own server.
SECRET_FIELDS = (
    "key_file",
    "password_file",
    "token_file",
    "client_secret_file",
    "private_key_file",
)


@dataclass(frozen=True)
class PermissionProblem:
    path: Path
    what: str  # "configuration" or the field, e.g. "destinations.1.key_file"
    mode: int
    fix: str  # the shell command that fixes it

    def __str__(self) -> str:
        if self.what == "configuration":
            return (
                f"{self.path}: the configuration is writable by group or others"
                f" (mode {self.mode:04o}); whoever can change it can redirect patients' readings."
                f" Fix: {self.fix}"
            )
        return (
            f"{self.path} ({self.what}) is readable by group or others (mode {self.mode:04o});"
            f" a secret must be private to the user edge runs as. Fix: {self.fix}"
        )


def secret_files(config: Config) -> list[tuple[str, Path]]:
    """``(field, path)`` of every key or secret file the configuration names."""
    found: list[tuple[str, Path]] = []
    sections: list[tuple[str, BaseModel]] = [
        (f"destinations.{i}", d) for i, d in enumerate(config.destinations)
    ]
    for where, destination in list(sections):
        oauth = getattr(destination, "oauth", None)
        if oauth is not None:
            sections.append((f"{where}.oauth", oauth))
    if config.bridge is not None:
        sections.append(("bridge", config.bridge))
    for where, section in sections:
        for name in SECRET_FIELDS:
            value = getattr(section, name, None)
            if value is not None:
                found.append((f"{where}.{name}", Path(value)))
    return found


def _too_open_for_a_secret(path: Path) -> int:
    """The mode bits a secret file must not have. Nothing for others, no group write; group read
    only for a file root owns while edge runs as another user, who reads it through the group
    (PostgreSQL's rule for its TLS key: Debian's ``ssl-cert`` group and ``/etc/ssl/private``,
    secrets root provisions for a service account)."""
    try:
        provisioned = os.stat(path).st_uid == 0 and os.geteuid() != 0
    except OSError:
        provisioned = False
    return 0o027 if provisioned else 0o077


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)  # follows symlinks: the file that is read
    except OSError:
        return None  # missing: the uplink that opens it says so


def permission_problems(path: Path | None, config: Config | None = None) -> list[PermissionProblem]:
    """What is too open: the configuration file ``path`` (writable by group or others) and the
    key and secret files of ``config`` (any access by group or others). Missing files are not
    reported here. Only on POSIX systems."""
    if os.name != "posix":
        return []
    problems = []
    if path is not None:
        mode = _mode(path)
        if mode is not None and mode & 0o022:
            problems.append(
                PermissionProblem(
                    path, "configuration", mode, f"chmod go-w {shlex.quote(str(path))}"
                )
            )
    for what, secret in secret_files(config) if config is not None else []:
        mode = _mode(secret)
        if mode is not None and mode & _too_open_for_a_secret(secret):
            problems.append(
                PermissionProblem(secret, what, mode, f"chmod 600 {shlex.quote(str(secret))}")
            )
    return problems


def check_permissions(path: Path | None, config: Config | None = None) -> None:
    """Raise ``ConfigError`` naming each file that is too open and the command that fixes it."""
    _refuse(permission_problems(path, config))


def _refuse(problems: list[PermissionProblem]) -> None:
    if problems:
        raise ConfigError("; ".join(str(p) for p in problems))


DEMO_PATIENT = "urn:oid:1.2.250.1.213.1.4.10|2990175000001"  # a test-NIR style demo identifier
DEMO_PATIENT_2 = "urn:oid:1.2.250.1.213.1.4.10|2990175000002"


def demo_config(data_dir: Path) -> Config:
    """The embedded default: emulated scales, a blood-pressure monitor, a thermometer, a glucose
    meter and a CGM (both paired Just Works), a pulse oximeter and a body-composition scale, demo
    patients with consent, a local record.

    User 2 of the generic scale is deliberately left unbound, to show that a reading nobody was
    bound to is kept but never sent.
    """
    return parse_config(
        {
            "gateway": {"data_dir": str(data_dir)},
            "link": {
                "backend": "bumble",
                "emulate": [
                    "generic-wss",
                    "acme-bs440-lb",
                    "and-uc352ble",
                    "generic-bps",
                    "generic-hts",
                    "generic-gls",
                    "generic-cgm",
                    "generic-plx",
                    "generic-bcs",
                ],
                "idle_timeout": 2.0,
                "scan_seconds": 0.5,
            },
            "bindings": [
                {"device": "00-1B-2C-FF-FE-3D-4E-5F", "user_index": 1, "patient": DEMO_PATIENT},
                {"device": "C0:ED:6E:00:00:02", "patient": DEMO_PATIENT_2},
                {"device": "00-09-1F-FF-FE-00-35-2B", "patient": DEMO_PATIENT},
                {"device": "00-1B-2C-FF-FE-3D-4E-60", "user_index": 1, "patient": DEMO_PATIENT},
                {"device": "00-1B-2C-FF-FE-3D-4E-61", "patient": DEMO_PATIENT_2},
                {"device": "00-1B-2C-FF-FE-3D-4E-62", "patient": DEMO_PATIENT},
                {"device": "00-1B-2C-FF-FE-3D-4E-69", "patient": DEMO_PATIENT},
                {"device": "00-1B-2C-FF-FE-3D-4E-6A", "patient": DEMO_PATIENT_2},
                {"device": "00-1B-2C-FF-FE-3D-4E-70", "user_index": 1, "patient": DEMO_PATIENT},
            ],
            "destinations": [{"type": "local", "name": "record"}],
            "show_readings": True,
        }
    )
