"""The ``edge`` command line: thin commands over the gateway's libraries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Coroutine
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

T = TypeVar("T")

app = typer.Typer(
    help="BLE health devices to the patient's FHIR record, with consent.", add_completion=False
)
consent_app = typer.Typer(help="The patient's consent (default: deny).", no_args_is_help=True)
outbox_app = typer.Typer(help="What is waiting to leave, and why.", no_args_is_help=True)
records_app = typer.Typer(
    help="The local FHIR record (embedded default destination).", no_args_is_help=True
)
app.add_typer(consent_app, name="consent")
app.add_typer(outbox_app, name="outbox")
app.add_typer(records_app, name="records")
users_app = typer.Typer(
    help="Users of multi-user devices (User Data Service).", no_args_is_help=True
)
app.add_typer(users_app, name="users")

DEFAULT_DATA_DIR = Path("edge-data")


@app.callback()
def _every_command() -> None:
    # Whatever the command, a warning printed before (or without) logging setup goes through
    # the privacy filter too: Python's last-resort handler gets it (gateway/privacy.py).
    from gateway.privacy import install

    install()


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file", envvar="EDGE_CONFIG"),
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="state directory", envvar="EDGE_DATA_DIR")
]


def _setup_logging(verbose: bool, quiet: bool = False) -> None:
    """Logs on stderr; above DEBUG, patient identifiers and health values are masked by a filter
    on every root handler (gateway/privacy.py, docs/privacy.md); DEBUG records are left whole."""
    from gateway.privacy import install

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install()
    for noisy in ("bumble", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # a line per HTTP request (URLs only: identifiers go in request bodies)
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _config(config: Path | None, data_dir: Path | None) -> Any:
    from gateway.config import demo_config, load_config
    from gateway.errors import ConfigError

    try:
        if config is not None:
            return load_config(config)
        return demo_config(data_dir or DEFAULT_DATA_DIR)
    except ConfigError as exc:
        raise _fail(f"invalid configuration: {exc}") from exc


def _data_dir(config: Path | None, data_dir: Path | None) -> Path:
    if config is not None:
        return Path(_config(config, None).gateway.data_dir)
    return data_dir or DEFAULT_DATA_DIR


# -- run ------------------------------------------------------------------------------------
def _printer(event: Any) -> None:
    from gateway.daemon import ReadingEvent

    if not isinstance(event, ReadingEvent):
        return
    r = event.reading
    values = ", ".join(
        f"{q.name} {q.value if q.value is not None else q.absent} {q.unit}" for q in r.quantities
    )
    who = f"user {r.user_index}" if r.user_index is not None else "single user"
    device = r.device.model or r.device.key
    if event.duplicate:
        fate = "already stored (duplicate ignored)"
    elif event.patient is None:
        fate = "UNATTRIBUTED: kept, never sent"
    else:
        masked = "…" + event.patient.value[-4:]
        parts = [f"queued for {', '.join(event.queued)}"] if event.queued else []
        if event.held:
            parts.append(f"held for consent: {', '.join(event.held)}")
        if not parts:
            parts.append("kept, not sendable (quarantined: see edge outbox status)")
        fate = f"patient {masked}: " + "; ".join(parts)
    typer.echo(
        f"{r.effective_time.isoformat()}  {device:<12} {who:<11} {values}"
        f"  [{r.time_source}]  -> {fate}"
    )


@app.command()
def run(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the gateway. Without --config: the demo (emulated scales into a local record)."""
    from gateway.daemon import Daemon, DeliveryEvent
    from gateway.errors import ConfigError, GatewayError

    demo = config is None
    _setup_logging(verbose, quiet=demo)
    cfg = _config(config, data_dir)
    if demo:
        from gateway.config import DEMO_PATIENT, DEMO_PATIENT_2
        from gateway.consent import ConsentStore

        store = ConsentStore(cfg.gateway.data_dir / "consent.sqlite")
        active = {(g.patient, g.category) for g in store.grants(active_only=True)}
        for patient in (DEMO_PATIENT, DEMO_PATIENT_2):
            for category in ("vital-signs", "glucose"):
                if (patient, category) not in active:
                    store.grant(patient, "record", category, recorded_by="demo")
        store.close()
        typer.echo(
            f"edge demo: {len(cfg.link.emulate)} emulated devices -> local record in"
            f" {cfg.gateway.data_dir}/record.sqlite"
        )

    delivered = {"n": 0}

    def on_event(event: Any) -> None:
        if isinstance(event, DeliveryEvent):
            delivered["n"] += event.delivered
        if cfg.show_readings:
            _printer(event)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        daemon = Daemon(cfg, on_event=on_event)
        await daemon.run(stop, until_idle=demo)

    try:
        asyncio.run(main())
    except ConfigError as exc:
        raise _fail(f"invalid configuration: {exc}") from exc
    except GatewayError as exc:
        raise _fail(str(exc), 1) from exc
    if demo:
        typer.echo(
            f"demo finished: {delivered['n']} deliveries to the record. Try: edge records list"
            f"{'' if cfg.gateway.data_dir == DEFAULT_DATA_DIR else f' --data-dir {data_dir}'}"
            " ; edge outbox status"
        )


# -- bridge ------------------------------------------------------------------------------------
@app.command()
def bridge(
    config: ConfigOpt = None,
    client_id: Annotated[
        str | None,
        typer.Option(help="override bridge.client_id (each bridge process needs its own)"),
    ] = None,
    leave: Annotated[
        bool,
        typer.Option(
            "--leave",
            help="on stop, unsubscribe, take in what the broker still queued for this client id,"
            " then end its session: to remove this bridge for good",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Move readings from MQTT (shared subscription) into a FHIR server; see docs/bridge.md."""
    from gateway.bridge import BridgeError, build_bridge, load_bridge_config
    from gateway.errors import ConfigError

    _setup_logging(verbose)
    if config is None:
        raise _fail("edge bridge needs --config: a file with a [bridge] section")
    try:
        cfg = load_bridge_config(config, client_id=client_id)
        runner = build_bridge(cfg)
    except ConfigError as exc:
        raise _fail(f"invalid configuration: {exc}") from exc

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await runner.run(stop, leave=leave)

    try:
        asyncio.run(main())
    except BridgeError as exc:
        raise _fail(str(exc), 1) from exc


# -- scan / emulate ----------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def _open_link(cfg: Any) -> AsyncIterator[Any]:
    """The configured link, open; with the demo (or ``link.emulate``), its emulated devices on
    a virtual radio next to it for as long as the link is used."""
    from firmware_profiles import load_profiles
    from gateway.emulator import EmulatedDevice
    from gateway.link.base import Link

    link: Link
    devices: list[EmulatedDevice] = []
    if cfg.link.backend == "bleak":
        from gateway.link.bleak_link import BleakLink

        link = BleakLink(adapter=cfg.link.adapter)
    else:
        from gateway.link.bumble_link import BumbleLink, new_local_link

        if cfg.link.emulate:
            local = new_local_link()
            link = BumbleLink(local_link=local)
            profiles = load_profiles()
            devices = [EmulatedDevice(profiles[p]) for p in cfg.link.emulate]
        else:
            link = BumbleLink(transport=cfg.link.transport)
    try:
        await link.open()
        for device in devices:
            await device.attach(local)
        yield link
    finally:
        for device in devices:
            await device.detach()
        await link.close()


@app.command()
def scan(
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to listen")] = 3.0,
) -> None:
    """List advertising devices with a supported health service."""
    from drivers import uuids
    from drivers.registry import SERVICES
    from gateway.link.base import LinkError

    cfg = _config(config, None)

    async def main() -> None:
        try:
            async with _open_link(cfg) as link:
                ads = await link.scan(timeout, SERVICES)
        except LinkError as exc:
            raise _fail(str(exc), 1) from exc
        if not ads:
            typer.echo("no supported device found")
        for ad in sorted(ads, key=lambda a: a.address):
            services = ",".join(uuids.NAMES.get(u, u) for u in ad.service_uuids)
            typer.echo(f"{ad.address}  {ad.name or '?':<14} rssi={ad.rssi}  {services}")

    asyncio.run(main())


@users_app.command("register")
def users_register(
    address: Annotated[str, typer.Argument(help="the device's Bluetooth address")],
    consent_code: Annotated[
        int, typer.Option(min=0, max=9999, help="the 4-digit code the person chose")
    ],
    config: ConfigOpt = None,
) -> None:
    """Register a new user on a multi-user device (User Data Service) and print its index."""
    from drivers.user_data import register
    from gateway.link.base import LinkError

    cfg = _config(config, None)

    async def main() -> int:
        async with _open_link(cfg) as link:
            connection = await link.connect(address)
            try:
                await connection.discover()
                return await register(connection, consent_code)
            finally:
                await connection.disconnect()

    try:
        index = asyncio.run(main())
    except LinkError as exc:
        raise _fail(str(exc), 1) from exc
    typer.echo(
        f'registered as user {index}. Bind it: [[bindings]] device = "{address}",'
        f' user_index = {index}, consent_code = <the code>, patient = "SYSTEM|VALUE"'
    )


@app.command()
def emulate(
    profiles: Annotated[list[str], typer.Argument(help="firmware profile ids")],
    hci: Annotated[str, typer.Option(help="serve gateways here, e.g. tcp-server:127.0.0.1:9000")],
    generate: Annotated[
        int, typer.Option(help="replace stored readings with N generated ones")
    ] = 0,
    ack_log: Annotated[Path | None, typer.Option(help="append each confirmed reading here")] = None,
) -> None:
    """Serve emulated devices on a virtual radio that gateways reach as an HCI transport."""
    from firmware_profiles import EmulatedReading, load_profiles
    from gateway.emulator import EmulatedDevice, VirtualRadio

    _setup_logging(False)
    if not hci.startswith("tcp-server:"):
        raise _fail("--hci must be tcp-server:HOST:PORT")
    host, _, port = hci.removeprefix("tcp-server:").rpartition(":")
    catalog = load_profiles()
    unknown = [p for p in profiles if p not in catalog]
    if unknown:
        raise _fail(
            f"unknown firmware profile(s): {', '.join(unknown)}; known: {', '.join(catalog)}"
        )
    not_scales = [p for p in profiles if catalog[p].kind != "weight-scale"]
    if generate and not_scales:
        names = ", ".join(not_scales)
        raise _fail(f"--generate makes weight readings; not a weight scale: {names}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        radio = VirtualRadio()
        bound = await radio.serve(host or "127.0.0.1", int(port))
        scales = []
        for index, profile_id in enumerate(profiles):
            stored = None
            if generate:
                start = datetime(2026, 1, 1, 8, 0, 0)
                stored = [
                    EmulatedReading(
                        weight=Decimal(60000 + 5 * (i % 4000)) / 1000,
                        time=(start + timedelta(minutes=i)).isoformat(),
                        user=1,
                    )
                    for i in range(generate)
                ]
            scale = EmulatedDevice(
                catalog[profile_id],
                stored=stored,
                live=[] if generate else None,
                ack_log=ack_log.with_suffix(f".{index}.jsonl")
                if ack_log and len(profiles) > 1
                else ack_log,
            )
            await scale.attach(radio.link)
            scales.append(scale)
        typer.echo(
            f"emulating {', '.join(profiles)}; gateways connect with tcp-client:{host}:{bound}",
            err=True,
        )
        typer.echo(f"READY {bound}", err=True)
        await stop.wait()
        for scale in scales:
            await scale.detach()
        await radio.close()

    asyncio.run(main())


# -- decode ------------------------------------------------------------------------------------
@app.command()
def decode(
    uuid: Annotated[str, typer.Argument(help="characteristic, e.g. 2A9D")],
    payload: Annotated[str, typer.Argument(help="value as hex")],
    fhir: Annotated[bool, typer.Option("--fhir", help="print the FHIR resources instead")] = False,
    patient: Annotated[
        str, typer.Option(help="SYSTEM|VALUE for --fhir")
    ] = "urn:example:patient|demo",
) -> None:
    """Decode a characteristic value (and map it to FHIR with --fhir)."""
    from drivers.codecs import DECODERS, to_jsonable
    from drivers.codecs.errors import DecodeError
    from gateway.link.base import normalize_uuid

    key = normalize_uuid(uuid)
    if key not in DECODERS:
        raise _fail(f"no decoder for {key}; known: {', '.join(sorted(DECODERS))}")
    try:
        data = bytes.fromhex(payload.replace(" ", "").replace(":", ""))
    except ValueError as exc:
        raise _fail(f"payload is not hex: {exc}") from exc
    try:
        decoded = DECODERS[key](data)
    except DecodeError as exc:
        raise _fail(str(exc), 1) from exc
    if not fhir:
        typer.echo(json.dumps(to_jsonable(decoded), indent=2, ensure_ascii=False))
        return
    from drivers.models import DeviceIdentity, GatewayInfo, PatientRef, utcnow
    from drivers.registry import READINGS
    from drivers.session import Value
    from firmware_profiles import ClockPolicy
    from gateway.identity import local_zone
    from gateway.serialize import dumps
    from mappers.errors import MappingError
    from mappers.phd import map_reading, transaction_bundle

    if key not in READINGS:
        raise _fail(f"--fhir maps measurements ({', '.join(sorted(READINGS))}); not {key}")
    reading = READINGS[key](
        Value(
            payload=data,
            device=DeviceIdentity(address="00:00:00:00:00:00"),
            received_at=utcnow(),
            policy=ClockPolicy.LOCAL,
            zone=local_zone(None),
        )
    )
    gateway = GatewayInfo(system_id="0200000000000001", software_version="cli")
    try:
        bundle = transaction_bundle(map_reading(reading, PatientRef.parse(patient), gateway))
    except (MappingError, ValueError) as exc:
        raise _fail(f"cannot map to FHIR: {exc}", 1) from exc
    typer.echo(dumps(bundle, indent=True).decode())


# -- consent -----------------------------------------------------------------------------------
def _consent_store(config: Path | None, data_dir: Path | None) -> Any:
    from gateway.consent import ConsentStore

    return ConsentStore(_data_dir(config, data_dir) / "consent.sqlite")


def _patient(text: str) -> str:
    from drivers.models import PatientRef

    try:
        return str(PatientRef.parse(text))
    except ValueError as exc:
        raise _fail(f"--patient: {exc}") from exc


def _when(text: str | None, option: str) -> datetime | None:
    from datetime import UTC

    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _fail(f"{option}: not an ISO date or date-time: {text!r}") from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


@consent_app.command("grant")
def consent_grant(
    patient: Annotated[str, typer.Option(help="SYSTEM|VALUE")],
    destination: Annotated[str, typer.Option(help="destination name from the config")],
    category: Annotated[str, typer.Option(help="data category, or * for all")] = "vital-signs",
    recorded_by: Annotated[
        str, typer.Option(help="who recorded it: 'patient', or the nurse's name")
    ] = "patient",
    attestation: Annotated[
        str | None,
        typer.Option(help="required when not recorded by the patient: how the patient agreed"),
    ] = None,
    period_end: Annotated[
        str | None, typer.Option(help="the consent lapses then (ISO date-time; default never)")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Permit sending a patient's readings of a category to a destination."""
    if recorded_by != "patient" and not attestation:
        raise _fail("--attestation: recorded on the patient's behalf, say how the patient agreed")
    end = _when(period_end, "--period-end")
    store = _consent_store(config, data_dir)
    try:
        grant = store.grant(
            _patient(patient),
            destination,
            category,
            recorded_by,
            attestation=attestation,
            period_end=end,
        )
    except ValueError as exc:
        raise _fail(f"--period-end: {exc}") from exc
    typer.echo(f"granted #{grant.id}: {category} -> {destination}")


@consent_app.command("revoke")
def consent_revoke(
    patient: Annotated[str, typer.Option(help="SYSTEM|VALUE")],
    destination: Annotated[str, typer.Option(help="destination name")],
    category: Annotated[str | None, typer.Option(help="only this category")] = None,
    purge: Annotated[
        bool,
        typer.Option("--purge", help="also drop what was not sent yet to that destination"),
    ] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Stop sending: takes effect before the next send. With --purge, the readings of that
    patient still waiting for that destination are dropped (audited), not only held."""
    from gateway.errors import GatewayError
    from gateway.outbox import Outbox

    who = _patient(patient)
    store = _consent_store(config, data_dir)
    try:
        count = store.revoke(who, destination, category)
        typer.echo(f"revoked {count} grant(s)")
        still = _still_permitted(store, who, destination, category)
    except ValueError as exc:
        raise _fail(f"--category: {exc}") from exc
    finally:
        store.close()
    outbox_path = _data_dir(config, data_dir) / "outbox.sqlite"
    if not purge or not outbox_path.exists():
        if still:
            raise _fail(still, 1)
        return

    async def main() -> int:
        async with Outbox(outbox_path, create_key=False) as outbox:
            return await outbox.purge(
                patient=who,
                destination=destination,
                category=None if category == "*" else category,
                reason="consent withdrawn: purged unsent",
            )

    try:
        purged = asyncio.run(main())
    except GatewayError as exc:
        raise _fail(f"revoked, but nothing purged: {exc}", 1) from exc
    typer.echo(f"purged {purged} reading(s) not yet sent to {destination}")
    if still:
        raise _fail(still, 1)


def _still_permitted(store: Any, who: str, destination: str, category: str | None) -> str:
    """What still permits sending after a revocation (an imported or synced Consent), said."""
    from gateway.consent.store import ANY_CATEGORY, KNOWN_CATEGORIES

    categories = KNOWN_CATEGORIES if category in (None, ANY_CATEGORY) else {category}
    for name in sorted(categories):
        decision = store.decide(who, name, destination)
        if decision.permit:
            return (
                f"{name} to {destination} is still permitted: {decision.reason}. Remove an"
                " imported Consent with edge consent remove; a synced one at the record server"
            )
    return ""


@consent_app.command("list")
def consent_list(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="include revoked grants")] = False,
    fhir: Annotated[bool, typer.Option("--fhir", help="every consent as FHIR R4 JSON")] = False,
) -> None:
    """Show grants and Consent resources (the patient identifier is shown: this is the
    patient's own console)."""
    store = _consent_store(config, data_dir)
    grants = store.grants(active_only=not all_)
    consents = store.consents()
    if fhir:
        import json as _json

        resources = [g.to_fhir() for g in grants]
        for c in consents:
            row = store.consent_resource(c.source, c.consent_id)
            if row is not None:
                resources.append(row)
        typer.echo(_json.dumps(resources, indent=2))
        return
    if not grants and not consents:
        typer.echo("no consent recorded: nothing is sent anywhere")
    for g in grants:
        state = f"revoked {g.revoked_at}" if g.revoked_at else "active"
        if g.period_end and not g.revoked_at:
            state += f" until {g.period_end}"
        by = g.recorded_by + (f" (attested: {g.attestation})" if g.attestation else "")
        typer.echo(
            f"#{g.id} {g.patient} {g.category} -> {g.destination}  "
            f"granted {g.granted_at} by {by}  {state}"
        )
    for c in consents:
        cached = f"  cached until {c.expires_at}" if c.expires_at else ""
        typer.echo(
            f"Consent/{c.consent_id} v{c.version or '-'} {c.patient} {c.status}"
            f"  from {c.source}, stored {c.stored_at}{cached}"
        )


@consent_app.command("import")
def consent_import(
    file: Annotated[Path, typer.Argument(help="a Consent, or a Bundle of Consents (JSON)")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Keep FHIR R4 Consent resources from a JSON file (validated; nothing kept on an error)."""
    from gateway.consent import ConsentFormatError, parse_consent

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror}") from exc
    except ValueError as exc:
        raise _fail(f"{file}: not valid JSON: {exc}") from exc
    resources: list[Any] = [data]
    where = [""]
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        resources = [e.get("resource") if isinstance(e, dict) else e for e in data.get("entry", [])]
        where = [f"entry[{i}].resource." for i in range(len(resources))]
    for prefix, resource in zip(where, resources, strict=True):
        try:
            consent = parse_consent(resource)
            if consent.patient is None:
                raise ConsentFormatError("patient.identifier", "needed to know whose consent it is")
        except ConsentFormatError as exc:
            raise _fail(f"{file}: {prefix}{exc}", 1) from exc
    store = _consent_store(config, data_dir)
    for resource in resources:
        consent = store.import_consent(resource)
        typer.echo(f"imported Consent/{consent.id or '-'} v{consent.version or '-'}")


@consent_app.command("remove")
def consent_remove(
    consent_id: Annotated[str, typer.Argument(help="the Consent's id, as edge consent list shows")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Forget an imported Consent. Synced ones come from the record server (change them there);
    local grants are revoked (edge consent revoke)."""
    store = _consent_store(config, data_dir)
    try:
        if not store.remove_imported(consent_id.removeprefix("Consent/")):
            raise _fail(f"no imported Consent {consent_id} (see edge consent list)", 1)
    finally:
        store.close()
    typer.echo(f"removed Consent/{consent_id.removeprefix('Consent/')}: it decides nothing now")


@consent_app.command("sync")
def consent_sync(
    destination: Annotated[str, typer.Option(help="a fhir destination of the config")],
    config: Annotated[
        Path, typer.Option("--config", "-c", help="TOML configuration file", envvar="EDGE_CONFIG")
    ],
    ttl_hours: Annotated[
        float, typer.Option(help="how long the synced consent holds offline", min=0.01)
    ] = 24.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Fetch every bound patient's Consents from the record server into the local cache."""
    from gateway.consent import ConsentStore
    from gateway.consent.sync import ConsentSyncError, sync_consents

    _setup_logging(verbose)
    cfg = _config(config, None)
    store = ConsentStore(Path(cfg.gateway.data_dir) / "consent.sqlite")
    try:
        result = asyncio.run(sync_consents(store, cfg, destination, ttl=timedelta(hours=ttl_hours)))
    except ConsentSyncError as exc:
        raise _fail(str(exc), 1) from exc
    finally:
        store.close()
    typer.echo(
        f"synced {result.consents} consent(s) for {result.patients} patient(s) from {destination}"
    )
    for failure in result.failures:
        typer.echo(f"not synced: {failure}", err=True)
    if result.failures:
        raise typer.Exit(1)


# -- outbox ------------------------------------------------------------------------------------
@outbox_app.command("status")
def outbox_status(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Readings stored, per-destination states, and quarantined items with reasons."""
    from dataclasses import asdict

    path = _data_dir(config, data_dir) / "outbox.sqlite"
    if not path.exists():
        raise _fail(f"no outbox at {path}", 1)

    import sqlite3

    from gateway.outbox.store import read_status

    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:  # read-only: no data key needed, nothing migrated
        status = read_status(conn)
    finally:
        conn.close()
    if as_json:
        typer.echo(json.dumps(asdict(status), indent=2))
        return
    typer.echo(
        f"readings stored: {status.readings} (unattributed, never sent: {status.unattributed})"
    )
    for destination, states in sorted(status.by_destination.items()):
        detail = ", ".join(f"{k}={v}" for k, v in sorted(states.items()))
        typer.echo(f"  {destination}: {detail}")
    if status.skipped:
        typer.echo("skipped (the destination's profile set has no form for them):")
        for k in status.skipped:
            typer.echo(f"  {k['destination']}: {k['count']} x {k['reason']}")
    if status.quarantined:
        typer.echo("quarantined (edge outbox retry ENVELOPE once the cause is fixed):")
        for q in status.quarantined:
            where = q["destination"] or f"device {q['device']} {q['characteristic']}"
            envelope = f" envelope {q['envelope']}" if q["envelope"] is not None else ""
            typer.echo(f"  #{q['id']} [{q['source']}] {where}{envelope}: {q['reason']}")
            for e in q["entries"]:
                detail = f" ({e['detail']})" if e["detail"] else ""
                where = f" {e['location']}" if e["location"] else ""
                typer.echo(f"      {e['resource']}: {e['result']}{where}{detail}")


@outbox_app.command("unattributed")
def outbox_unattributed(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Readings kept with no patient (no binding matched them), oldest first: id, receipt time,
    kind and reading key (device, user index, kind, device time); no values."""
    from gateway.errors import GatewayError
    from gateway.outbox import Outbox

    path = _data_dir(config, data_dir) / "outbox.sqlite"
    if not path.exists():
        raise _fail(f"no outbox at {path}", 1)

    async def main() -> list[Any]:
        async with Outbox(path, create_key=False) as outbox:
            return await outbox.unattributed()

    try:
        rows = asyncio.run(main())
    except GatewayError as exc:
        raise _fail(str(exc), 1) from exc
    for row in rows:
        typer.echo(f"{row.reading_id:>6}  {row.received_at}  {row.kind:<16} {row.key}")
    typer.echo(f"{len(rows)} unattributed reading(s)")


@outbox_app.command("attribute")
def outbox_attribute(
    reading: Annotated[int, typer.Argument(help="the reading's id (edge outbox unattributed)")],
    patient: Annotated[str, typer.Option(help="whose reading it is: SYSTEM|VALUE")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Bind an unattributed reading to a patient: it is mapped and consent-checked for every
    destination as if it had just arrived, and the audit trail records who did it. Readings that
    already belong to someone are refused (correct those in the record)."""
    from drivers.models import PatientRef
    from gateway import audit
    from gateway.daemon import Daemon
    from gateway.errors import GatewayError

    who = PatientRef.parse(_patient(patient))
    cfg = _config(config, data_dir)
    if not (cfg.gateway.data_dir / "outbox.sqlite").exists():
        raise _fail(f"no outbox at {cfg.gateway.data_dir / 'outbox.sqlite'}", 1)

    async def main() -> tuple[str, tuple[str, ...]]:
        daemon = Daemon(cfg)
        daemon.outbox.actor = audit.local_actor()  # the audit names who ran the command
        daemon.outbox.create_key = False  # only the gateway makes the data key
        try:
            async with daemon.outbox:
                unknown = set(await daemon.outbox.destinations()) - set(daemon.uplinks)
                if unknown:
                    raise GatewayError(
                        f"this outbox sends to {', '.join(sorted(unknown))}, which the"
                        " configuration does not name: give the gateway's --config"
                    )
                await daemon._audit_consent()  # grants before the decisions resting on them
                prepared = await daemon.attribute(reading, who)
        finally:
            daemon.consent.close()
        return prepared.reading.kind, prepared.held

    try:
        kind, held = asyncio.run(main())
    except GatewayError as exc:
        raise _fail(str(exc), 1) from exc
    typer.echo(
        f"reading {reading} ({kind}) now belongs to the patient; queued for every destination"
    )
    for name in held:
        typer.echo(f"  {name}: waits for the patient's consent (edge consent grant)")


@outbox_app.command("retry")
def outbox_retry(
    envelope: Annotated[int, typer.Argument(help="envelope id (from outbox status)")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Send a quarantined envelope again (after fixing the cause)."""
    from gateway.errors import GatewayError
    from gateway.outbox import Outbox

    path = _data_dir(config, data_dir) / "outbox.sqlite"

    async def main() -> str:
        async with Outbox(path, create_key=False) as outbox:
            if await outbox.retry_quarantined(envelope):
                return ""
            return await outbox.why_not_retried(envelope)

    try:
        refused = asyncio.run(main())
    except GatewayError as exc:
        raise _fail(str(exc), 1) from exc
    if refused:
        raise _fail(refused, 1)
    typer.echo(f"envelope {envelope} will be sent again")


# -- keys --------------------------------------------------------------------------------------
keys_app = typer.Typer(
    help="The data key that encrypts the outbox at rest (docs/encryption.md).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


@keys_app.command("rotate")
def keys_rotate(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Re-encrypt the outbox and the local record under a new data key. Stop the gateway first.

    With the key file (DATA_DIR/data.key) a new key is made and swapped in; with a key from
    EDGE_DATA_KEY or a systemd credential, give the new one in EDGE_DATA_KEY_NEW, then replace
    the old one where the gateway gets it."""
    from gateway import keys
    from gateway.errors import GatewayError
    from gateway.uplinks.base import UplinkError

    directory = _data_dir(config, data_dir)
    cfg = _config(config, None) if config is not None else None
    try:
        done = asyncio.run(keys.rotate(directory, keys.record_paths(directory, cfg)))
    except (GatewayError, UplinkError) as exc:
        raise _fail(str(exc), 1) from exc
    record = f" and {done.resources} record resource(s)" if done.resources else ""
    typer.echo(f"re-encrypted {done.values} stored value(s){record}; {done.where}")


# -- audit -------------------------------------------------------------------------------------
audit_app = typer.Typer(
    help="The audit trail: who did what with which reading, when and why (no health values).",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")


def _audit_db(config: Path | None, data_dir: Path | None) -> Any:
    """The outbox file, read-only: looking at the trail never writes to it."""
    import sqlite3

    from gateway import audit

    path = _data_dir(config, data_dir) / "outbox.sqlite"
    if not path.exists():
        raise _fail(f"no outbox at {path}", 1)
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    if not audit.has_log(conn):
        conn.close()
        raise _fail(f"{path} has no audit trail (its audit tables are missing)", 1)
    return conn


def _audit_cipher(conn: Any, directory: Path) -> Any:
    """The key the outbox's pseudonym key is sealed under (a patient named SYSTEM|VALUE is
    hashed with it): found like the gateway finds it, checked against the outbox."""
    from gateway import crypto

    row = conn.execute("SELECT value FROM audit_meta WHERE name='data-key-check'").fetchone()
    try:
        unlocked = crypto.unlock(
            directory / "outbox.sqlite",
            None if row is None else bytes(row[0]),
            directory,
            create=False,
        )
    except crypto.DataKeyError as exc:
        raise _fail(f"{exc} (needed to find a patient given as SYSTEM|VALUE)", 1) from exc
    return unlocked.behind or unlocked.cipher


@audit_app.command("list")
def audit_list(
    limit: Annotated[int, typer.Option(min=0, help="the last N entries (0: all)")] = 50,
    patient: Annotated[
        str | None, typer.Option(help="only this patient: SYSTEM|VALUE, or the pseudonym")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Audit entries, oldest first: sequence, time (UTC), actor, action, references, reason."""
    from gateway import audit

    conn = _audit_db(config, data_dir)
    try:
        who = _patient(patient) if patient and "|" in patient else patient
        cipher = _audit_cipher(conn, _data_dir(config, data_dir)) if who and "|" in who else None
        entries = audit.entries(conn, limit=limit or None, patient=who, cipher=cipher)
    finally:
        conn.close()
    if as_json:
        typer.echo(json.dumps([e.as_dict() for e in entries], indent=2, ensure_ascii=False))
        return
    if not entries:
        typer.echo("no audit entries")
    for entry in entries:
        typer.echo(audit.describe(entry))


@audit_app.command("verify")
def audit_verify(
    expect: Annotated[
        list[str] | None,
        typer.Option(help="SEQ:HASH printed by an earlier verify: must still be in the chain"),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Check the hash chain; exit 1 naming the first bad entry (edited, deleted, reordered,
    truncated)."""
    from gateway import audit

    pairs = []
    for text in expect or []:
        seq, _, digest = text.lstrip("#").partition(":")
        if not seq.isdigit() or len(digest) != 64:
            raise _fail(f"--expect {text!r}: give SEQ:HASH as printed by edge audit verify")
        pairs.append((int(seq), digest.lower()))
    conn = _audit_db(config, data_dir)
    try:
        verdict = audit.verify(conn, pairs)
    finally:
        conn.close()
    if verdict.problem is not None:
        raise _fail(f"audit trail not intact: {verdict.problem}", 1)
    typer.echo(f"{verdict.count} entries, chain intact")
    typer.echo(f"head {verdict.head_seq}:{verdict.head_hash}")


@audit_app.command("export")
def audit_export(
    out: Annotated[Path | None, typer.Option(help="file (default: stdout)")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """The trail as FHIR R4 AuditEvent resources (NDJSON), with a Provenance after each delivery
    whose destination said where it stored the resources."""
    import orjson

    from gateway import audit

    conn = _audit_db(config, data_dir)
    id_file = _data_dir(config, data_dir) / "gateway-id"
    gateway_id = id_file.read_text(encoding="ascii").strip() if id_file.exists() else None
    counts: dict[str, int] = {"AuditEvent": 0, "Provenance": 0}
    try:
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(out.open("wb")) if out else sys.stdout.buffer
            for resource in audit.export(conn, gateway_id):
                handle.write(orjson.dumps(resource) + b"\n")
                counts[resource["resourceType"]] += 1
            handle.flush()
    finally:
        conn.close()
    if out is not None:
        typer.echo(
            f"{counts['AuditEvent']} AuditEvent and {counts['Provenance']} Provenance resources"
            f" written to {out}"
        )


# -- records -----------------------------------------------------------------------------------
def _record_path(config: Path | None, data_dir: Path | None, path: Path | None) -> Path:
    if path is not None:
        return path
    if config is not None:
        cfg = _config(config, None)
        for dest in cfg.destinations:
            if dest.type == "local":
                return Path(dest.path or cfg.gateway.data_dir / "record.sqlite")
    return _data_dir(config, data_dir) / "record.sqlite"


@records_app.command("push")
def records_push(
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 60.0,
) -> None:
    """Send what waits in the outbox now (no radio), then say what is left; exit 1 if any."""
    from gateway.daemon import Daemon, paths
    from gateway.errors import GatewayError
    from gateway.outbox import Outbox

    cfg = _config(config, None)

    async def main() -> dict[str, dict[str, int]]:
        daemon = Daemon(cfg)
        stop = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(daemon.run(stop, until_idle=True, radio=False), timeout)
        async with Outbox(paths(cfg)[0]) as outbox:
            return (await outbox.status()).by_destination

    try:
        states = asyncio.run(main())
    except GatewayError as exc:
        raise _fail(str(exc), 1) from exc
    left = 0
    for destination, counts in sorted(states.items()):
        typer.echo(f"{destination}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        left += counts.get("pending", 0)
    if left:
        raise _fail(f"{left} reading(s) still pending (see edge outbox status)", 1)


@records_app.command("list")
def records_list(
    patient: Annotated[str | None, typer.Option(help="SYSTEM|VALUE")] = None,
    code: Annotated[str | None, typer.Option(help="LOINC or MDC code, e.g. 29463-7")] = None,
    since: Annotated[datetime | None, typer.Option(help="effective on or after")] = None,
    until: Annotated[datetime | None, typer.Option(help="effective before")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    path: Annotated[Path | None, typer.Option(help="record file")] = None,
) -> None:
    """Observations in the local record."""

    record = _record_path(config, data_dir, path)
    if not record.exists():
        raise _fail(f"no record at {record}", 1)

    async def main() -> list[dict[str, Any]]:
        async with _open_record(record, config, data_dir) as store:
            return list(
                await store.search(
                    patient=_patient(patient) if patient else None,
                    code=code,
                    since=since,
                    until=until,
                )
            )

    rows = _run_on_record(main())
    for obs in rows:
        coding = obs.get("code", {}).get("coding", [])
        loinc: dict[str, Any] = next(
            (c for c in coding if c.get("system") == "http://loinc.org"), {}
        )
        value = obs.get("valueQuantity")
        shown = (
            f"{value['value']} {value.get('code', '')}"
            if value
            else f"(no value: {obs.get('dataAbsentReason', {}).get('coding', [{}])[0].get('code')})"
        )
        subject = obs.get("subject", {})
        about = subject.get("identifier", {}).get("value") or subject.get("reference", "?")
        typer.echo(
            f"{obs.get('effectiveDateTime', '?')}  "
            f"{loinc.get('display', loinc.get('code', '?')):<14} "
            f"{shown:<14} subject {about}  id {obs.get('id')}"
        )
    typer.echo(f"{len(rows)} observation(s)")


@app.command("export")
def export(
    ndjson: Annotated[bool, typer.Option("--ndjson", help="one resource per line")] = True,
    out: Annotated[Path | None, typer.Option(help="file (default: stdout)")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    path: Annotated[Path | None, typer.Option(help="record file")] = None,
) -> None:
    """Export the local record as FHIR NDJSON."""

    if not ndjson:
        raise _fail("only --ndjson export is supported")
    record = _record_path(config, data_dir, path)
    if not record.exists():
        raise _fail(f"no record at {record}", 1)

    async def main() -> None:
        async with _open_record(record, config, data_dir) as store:
            if out is None:
                await store.export_ndjson(sys.stdout)
            else:
                with out.open("w", encoding="utf-8") as handle:
                    await store.export_ndjson(handle)

    _run_on_record(main())


def _open_record(record: Path, config: Path | None, data_dir: Path | None) -> Any:
    """The local record for reading: its key is the gateway's, never made here."""
    from gateway.uplinks.record_store import RecordStore

    return RecordStore(record, key_dir=_data_dir(config, data_dir), create_key=False)


def _run_on_record(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``; a record that cannot be opened (no key, wrong key) is a clear error."""
    from gateway.uplinks.record_store import RecordStoreError

    try:
        return asyncio.run(work)
    except RecordStoreError as exc:
        raise _fail(str(exc), 1) from exc


# -- diagnose ----------------------------------------------------------------------------------
@app.command()
def diagnose(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A support bundle on stdout: versions, config (identifiers masked, no secrets), outbox and
    consent counts, data files and a permission report. No health value, no identifier in clear."""
    from gateway.diagnose import as_json as bundle_json
    from gateway.diagnose import collect, render

    _setup_logging(False, quiet=True)
    bundle = collect(config, data_dir, DEFAULT_DATA_DIR)
    if as_json:
        typer.echo(json.dumps(bundle_json(bundle), indent=2, ensure_ascii=False))
    else:
        typer.echo(render(bundle))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
