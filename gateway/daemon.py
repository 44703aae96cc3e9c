"""Wires link, driver, binding, mapper, consent, outbox and uplinks into one running gateway.

Two kinds of loop share one asyncio event loop: the BLE loop (scan, then one driver session at a
time) which ingests readings durably before the device is told they arrived, and one drain loop per
destination which leases envelopes, re-checks consent right before sending, and settles outcomes.

The outbox writes the audit trail (``gateway.audit``) under this gateway's id; the daemon gives it
the consent decisions (at queueing, right before each send, at release) and copies the grants and
revocations it sees in the consent store, so the trail says who allowed what, and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bumble.link import LocalLink

from drivers.codecs.errors import DecodeError
from drivers.models import DeviceIdentity, GatewayInfo, PatientRef, Reading
from drivers.registry import BY_KIND, DRIVERS, SERVICES
from firmware_profiles import FirmwareProfile, load_profiles
from gateway.binding import Binding, Bindings
from gateway.config import Config, FhirDestination, LocalDestination, MqttDestination
from gateway.consent import ConsentStore
from gateway.emulator import EmulatedDevice
from gateway.errors import ConfigError, GatewayError
from gateway.identity import gateway_system_id, local_zone
from gateway.link.base import Link, LinkError, PairingPolicy
from gateway.outbox import EnvelopeState, IngestResult, Item, NewEnvelope, Outbox
from gateway.outbox.store import LeaseResult
from gateway.serialize import dumps, reading_from_json, reading_to_json
from gateway.uplinks.base import Envelope, Outcome, OutcomeStatus, Uplink, UplinkError
from gateway.uplinks.fhir import FhirUplink
from gateway.uplinks.local import LocalUplink
from gateway.uplinks.mqtt import MqttTls, MqttUplink
from gateway.uplinks.oauth import OAuthClient
from mappers.errors import MappingError
from mappers.fr_mesures import NotSendable, map_reading_fr
from mappers.phd_template import BundleTemplates

log = logging.getLogger(__name__)

VERSION = "0.1.0"
DRAIN_INFLIGHT = 2  # batches on their way to one destination at once
PURGE_EVERY = 3600.0  # seconds between looks for readings past the consent retention limit


@dataclass(frozen=True, slots=True)
class ReadingEvent:
    """Something happened to a reading; for the demo printer (stdout), never for logs."""

    reading: Reading
    patient: PatientRef | None
    duplicate: bool
    held: tuple[str, ...]  # destinations waiting for consent
    queued: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    destination: str
    delivered: int
    retried: int
    rejected: int


Event = ReadingEvent | DeliveryEvent


def paths(config: Config) -> tuple[Path, Path]:
    data = config.gateway.data_dir
    return data / "outbox.sqlite", data / "consent.sqlite"


def _token_reader(path: Path) -> Callable[[bool], Awaitable[str]]:
    """A bearer token kept in a file (rotated by whoever writes it): read at each request."""

    async def token(_refresh: bool) -> str:
        return (await asyncio.to_thread(path.read_text, encoding="utf-8")).strip()

    return token


def build_uplink(
    dest: LocalDestination | MqttDestination | FhirDestination, config: Config, gateway_id: str
) -> Uplink:
    if isinstance(dest, LocalDestination):
        return LocalUplink(
            dest.name,
            dest.path or config.gateway.data_dir / "record.sqlite",
            key_dir=config.gateway.data_dir,
        )
    if isinstance(dest, FhirDestination):
        oauth = None
        if dest.oauth is not None:
            o = dest.oauth
            verify = ssl.create_default_context(cafile=str(dest.ca_file) if dest.ca_file else None)
            oauth = OAuthClient(
                o.token_url,
                o.client_id,
                secret=(
                    o.client_secret_file.read_text(encoding="utf-8").strip()
                    if o.client_secret_file
                    else None
                ),
                private_key=o.private_key_file,
                key_id=o.key_id,
                scope=o.scope,
                verify=verify,
            )
        return FhirUplink(
            dest.name,
            dest.base_url,
            ca_file=dest.ca_file,
            cert_file=dest.cert_file,
            key_file=dest.key_file,
            token=_token_reader(dest.token_file) if dest.token_file else None,
            oauth=oauth,
            timeout=dest.timeout,
            allow_plaintext=dest.allow_plaintext,
            profile_set=dest.profile_set,
            search_first=dest.search_before_send == "always",
        )
    tls = None
    if dest.ca_file is not None:
        tls = MqttTls(ca_file=dest.ca_file, cert_file=dest.cert_file, key_file=dest.key_file)
    password = None
    if dest.password_file is not None:
        password = dest.password_file.read_text(encoding="utf-8").strip()
    return MqttUplink(
        dest.name,
        host=dest.host,
        port=dest.port,
        client_id=dest.client_id or f"edge-{gateway_id}",
        topic_prefix=dest.topic_prefix,
        gateway_id=gateway_id,
        tls=tls,
        username=dest.username,
        password=password,
        require_subscriber=dest.require_subscriber,
    )


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A reading made ready for the outbox, and what to report once it is stored."""

    reading: Reading
    patient: PatientRef | None
    item: Item
    held: tuple[str, ...]
    unmappable: MappingError | None


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        on_event: Callable[[Event], None] | None = None,
        profiles: dict[str, FirmwareProfile] | None = None,
    ) -> None:
        self.config = config
        self.on_event = on_event or (lambda _event: None)
        self.profiles = profiles if profiles is not None else load_profiles()
        for profile_id in config.link.emulate:
            if profile_id not in self.profiles:
                raise ConfigError(f"link.emulate: unknown firmware profile {profile_id!r}")
        self.zone = local_zone(config.gateway.timezone)
        data_dir = config.gateway.data_dir
        self.gateway = GatewayInfo(
            system_id=gateway_system_id(data_dir),
            software_version=VERSION,
            time_sync=config.gateway.time_sync,
        )
        self.bindings = Bindings(
            Binding(b.device, PatientRef.parse(b.patient), b.user_index) for b in config.bindings
        )
        outbox_path, consent_path = paths(config)
        self.outbox = Outbox(
            outbox_path,
            retry_base=config.outbox.retry_base,
            retry_max=config.outbox.retry_max,
            actor=f"gateway:{self.gateway.system_id}",
        )
        self.consent = ConsentStore(consent_path)
        self._bundles = BundleTemplates(dumps)  # the mapping's fast path, per reading shape
        self._consent_seen: tuple[tuple[int, str | None], ...] | None = None
        self._consent_version: tuple[int, int] | None = None
        # destination -> (consent store version, monotonic time) of the last look at held groups
        self._release_looked: dict[str, tuple[tuple[int, int], float]] = {}
        self.uplinks: dict[str, Uplink] = {
            d.name: build_uplink(d, config, self.gateway.system_id) for d in config.destinations
        }
        consent_codes: dict[str, dict[int, int]] = {}
        for b in config.bindings:
            if b.consent_code is not None and b.user_index is not None:
                consent_codes.setdefault(b.device, {})[b.user_index] = b.consent_code
        self.drivers = [
            driver(
                profiles=self.profiles,
                zone=self.zone,
                idle_timeout=config.link.idle_timeout,
                consent_codes=consent_codes,
            )
            for driver in DRIVERS
        ]
        self.emulators: list[EmulatedDevice] = []
        self._local_link: LocalLink | None = None
        self._wake = {name: asyncio.Event() for name in self.uplinks}
        self._batch = {d.name: _batch_size(d, config) for d in config.destinations}
        self.sessions = 0
        # destination -> the solution OID of its fr-mesures form (absent: the PHD form)
        self._fr_mesures = {
            d.name: d.solution_oid or ""
            for d in config.destinations
            if not isinstance(d, LocalDestination) and d.profile_set == "fr-mesures"
        }

    # -- ingest (the driver's sink) ------------------------------------------------------
    async def on_reading(self, reading: Reading) -> None:
        await self.on_readings([reading])

    async def on_readings(self, readings: Sequence[Reading]) -> None:
        """Store readings durably: each is submitted on its own, so the outbox's group commit
        writes many in one transaction while a bad one still fails alone."""
        await self._audit_consent()
        pending = []
        for reading in readings:
            prepared = self._prepare(reading)
            pending.append((prepared, self.outbox.submit([prepared.item])))
        outcomes = await asyncio.shield(
            asyncio.gather(*(future for _, future in pending), return_exceptions=True)
        )
        failure: BaseException | None = None
        for (prepared, _), outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failure = failure or outcome
                continue
            # what follows a store (quarantine of the unmappable, wake-ups, events) happens for
            # every stored reading, even when another of the same download failed
            await self._stored(prepared, outcome[0])
        if failure is not None:
            raise failure

    def _prepare(self, reading: Reading, patient: PatientRef | None = None) -> _Prepared:
        """Bind (unless ``patient`` is given), map and consent-check one reading into the
        outbox item that keeps it."""
        if patient is None:
            patient = self.bindings.resolve(reading.device, reading.user_index)
        category = BY_KIND[reading.kind].CATEGORY
        envelopes: list[NewEnvelope] = []
        held: list[str] = []
        unmappable: MappingError | None = None
        body, key = b"", ""
        if patient is not None:
            try:
                # the bundle, and the reading's idempotency key (the identifier of its first,
                # primary, Observation): byte for byte map_reading's, from the shape's template
                body, key = self._bundles.bundle_and_key(reading, patient, self.gateway)
            except MappingError as exc:
                # Keep the reading (it was accepted from the device) but send nothing of it:
                # raising here would leave the indication unconfirmed and the device would
                # resend this record forever, blocking every reading behind it.
                unmappable = exc
        if patient is not None and unmappable is None:
            fr_forms: dict[str, tuple[bytes, EnvelopeState | None, str]] = {}
            for name in self.uplinks:
                own_body, refused, reason = body, None, ""
                oid = self._fr_mesures.get(name)
                if oid is not None:
                    if oid not in fr_forms:
                        fr_forms[oid] = _fr_form(reading, patient, self.gateway, oid)
                    own_body, refused, reason = fr_forms[oid]
                decision = self.consent.decide(str(patient), category, name)
                state = EnvelopeState.PENDING if decision.permit else EnvelopeState.CONSENT_MISSING
                if refused is not None:
                    state = refused
                elif not decision.permit:
                    held.append(name)
                envelopes.append(
                    NewEnvelope(
                        destination=name,
                        idem_key=key,
                        body=own_body,
                        state=state,
                        decision=str(decision),
                        reason=reason,
                    )
                )
        item: Item = (
            reading.key,
            reading.device.key,
            reading.kind,
            category,
            str(patient) if patient else None,
            reading.received_at.isoformat(),
            reading_to_json(reading),
            envelopes,
        )
        return _Prepared(reading, patient, item, tuple(held), unmappable)

    async def attribute(self, reading_id: int, patient: PatientRef) -> _Prepared:
        """Bind an unattributed reading to ``patient`` afterwards (the operator knows whose it
        is): mapped and consent-checked for every destination as if it had just arrived, and
        recorded in the audit trail. The outbox must be open."""
        owner, payload = await self.outbox.stored_reading(reading_id)
        if owner is not None:
            raise GatewayError(f"reading {reading_id} already belongs to a patient")
        try:
            reading = reading_from_json(payload)
        except (ValueError, KeyError, TypeError) as exc:
            raise GatewayError(f"reading {reading_id} cannot be read back: {exc}") from None
        prepared = self._prepare(reading, patient)
        if prepared.unmappable is not None:
            raise GatewayError(f"reading {reading_id} cannot be mapped: {prepared.unmappable}")
        await self.outbox.attribute(reading_id, str(patient), prepared.item[7])
        for name in self.uplinks:
            self._wake[name].set()
        return prepared

    async def _stored(self, prepared: _Prepared, result: IngestResult) -> None:
        reading, patient, unmappable = prepared.reading, prepared.patient, prepared.unmappable
        if unmappable is not None and not result.duplicate:
            await self.outbox.quarantine_input(
                device=reading.device.key,
                characteristic=reading.characteristic,
                reason=f"cannot map to FHIR: {unmappable}",
                raw=bytes.fromhex(reading.raw),
                source="mapping",
                reading_id=result.reading_id,
            )
            log.warning(
                "reading from %s quarantined: cannot map to FHIR: %s",
                reading.device.key,
                unmappable,
            )
        if not result.duplicate:
            for name in self.uplinks:
                self._wake[name].set()
        log.debug("reading %s stored (duplicate=%s)", reading.key, result.duplicate)
        held = prepared.held
        envelopes = prepared.item[7]
        queued = tuple(e.destination for e in envelopes if e.state is EnvelopeState.PENDING)
        self.on_event(
            ReadingEvent(
                reading=reading,
                patient=patient,
                duplicate=result.duplicate,
                held=held,
                queued=queued,
            )
        )

    async def on_malformed(
        self, device: DeviceIdentity, characteristic: str, payload: bytes, error: DecodeError
    ) -> None:
        await self.outbox.quarantine_input(
            device=device.key, characteristic=characteristic, reason=str(error), raw=payload
        )
        log.warning(
            "quarantined a malformed %s value from device %s: %s", characteristic, device.key, error
        )

    async def load_cursor(self, device: DeviceIdentity, stream: str) -> int | None:
        return await self.outbox.load_cursor(device.key, stream)

    async def save_cursor(self, device: DeviceIdentity, stream: str, value: int) -> None:
        await self.outbox.save_cursor(device.key, stream, value)

    def pairing(self) -> PairingPolicy:
        return PairingPolicy(
            bonds=self.config.gateway.data_dir / "bonds.json",
            passkeys=self.config.link.passkeys,
        )

    # -- loops ---------------------------------------------------------------------------
    async def _open_link(self) -> Link:
        cfg = self.config.link
        link: Link
        if cfg.backend == "bleak":
            from gateway.link.bleak_link import BleakLink

            link = BleakLink(adapter=cfg.adapter, pairing=self.pairing())
        else:
            from gateway.link.bumble_link import BumbleLink, new_local_link

            if cfg.emulate:
                self._local_link = new_local_link()
                link = BumbleLink(local_link=self._local_link, pairing=self.pairing())
            else:
                link = BumbleLink(transport=cfg.transport, pairing=self.pairing())
        await link.open()
        for profile_id in cfg.emulate:
            assert self._local_link is not None
            scale = EmulatedDevice(self.profiles[profile_id])
            await scale.attach(self._local_link)
            self.emulators.append(scale)
        return link

    async def ble_loop(self, link: Link, stop: asyncio.Event) -> None:
        wanted = {d.replace("-", ":").upper() for d in self.config.link.devices}
        while not stop.is_set():
            try:
                ads = await link.scan(self.config.link.scan_seconds, SERVICES)
            except LinkError as exc:
                log.warning("scan failed: %s", exc)
                await _sleep_or_stop(stop, 5.0)
                continue
            for ad in ads:
                if stop.is_set():
                    break
                if wanted and ad.address.upper() not in wanted:
                    continue
                driver = next((d for d in self.drivers if d.matches(ad)), None)
                if driver is None:
                    continue
                try:
                    summary = await driver.run(link, ad, self)
                    self.sessions += 1
                    log.info(
                        "session with %s: %d readings, %d malformed",
                        summary.device.key if summary.device else ad.address,
                        summary.readings,
                        summary.malformed,
                    )
                except LinkError as exc:
                    log.warning("session with %s failed: %s", ad.address, exc)

    async def drain_loop(self, name: str, stop: asyncio.Event) -> None:
        """Lease, re-check consent, send, settle; up to ``DRAIN_INFLIGHT`` batches at once, so
        the next batch is on its way while the destination answers the previous one. What a
        batch's destination answered is recorded in the transaction that leases the next one
        (one commit where there were two), or alone when nothing else is due, before a consent
        change is copied into the audit trail (its order stays the order of events), and at
        the end of the loop. An envelope whose answer is not recorded yet is never leased."""
        cfg = self.config.outbox
        wake = self._wake[name]
        slots = asyncio.Semaphore(DRAIN_INFLIGHT)
        inflight: dict[asyncio.Task[list[Outcome]], list[int]] = {}  # task -> its envelopes
        answered: list[Outcome] = []  # outcomes not yet recorded in the outbox
        failed: list[BaseException] = []
        loop = asyncio.get_running_loop()
        leasing: asyncio.Future[LeaseResult] | None = None

        def finished(task: asyncio.Task[list[Outcome]]) -> None:
            inflight.pop(task, None)
            wake.set()  # its answer is to be recorded, its slot about to be free
            rest = 0.0
            if task.cancelled():
                pass
            elif task.exception() is not None:
                failed.append(task.exception())  # type: ignore[arg-type]
            else:
                outcomes = task.result()
                answered.extend(outcomes)
                if any(o.status is OutcomeStatus.RETRY for o in outcomes) and not any(
                    o.status is OutcomeStatus.DELIVERED for o in outcomes
                ):
                    # the destination is struggling: this slot rests before the next try
                    rest = min(cfg.retry_base, 1.0)
            if rest and not stop.is_set():
                loop.call_later(rest, slots.release)
            else:
                slots.release()

        async def record(what: list[Outcome]) -> None:
            """Answers on their own; shielded: a transaction whose caller is cancelled may still
            commit, and answers are recorded once at most anyway (``Outbox.settle``)."""
            self._report(name, await asyncio.shield(self.outbox.settle(what)))

        try:
            while not stop.is_set():
                await slots.acquire()
                if stop.is_set():  # stopped while every slot was busy or resting
                    slots.release()
                    break
                if failed:  # a bug in the delivery task: stop, as any bug would
                    slots.release()
                    raise failed[0]
                taken: list[Outcome] = []  # out of ``answered``, not known to be recorded
                try:
                    if answered and self.consent.version() != self._consent_version:
                        taken = answered[:]
                        answered.clear()
                        await record(taken)
                        taken = []
                    await self._audit_consent()
                    await self._release_permitted(name)
                    # no await from here to the lease: what is out, or answered and not yet
                    # recorded, cannot be leased again
                    taken = answered[:]
                    answered.clear()
                    busy = [eid for ids in inflight.values() for eid in ids]
                    busy += [o.envelope_id for o in taken]
                    # consent again, right before the send: decided, held or leased, and audited;
                    # shielded, and awaited at the end if this loop is cancelled meanwhile
                    leasing = asyncio.ensure_future(
                        self.outbox.lease_consented(
                            name,
                            self._batch[name],
                            cfg.lease_seconds,
                            busy=busy,
                            decide=lambda patient, category: self.consent.decide(
                                patient, category, name
                            ),
                            settle=taken,
                        )
                    )
                    result = await asyncio.shield(leasing)
                except BaseException:
                    slots.release()
                    answered[:0] = taken  # recorded at most once: tried again at the end
                    raise
                self._report(name, result.recorded)
                sendable = [item.envelope for item in result.leased]
                if sendable:
                    task = asyncio.create_task(self._deliver(name, sendable))
                    inflight[task] = [e.id for e in sendable]
                    task.add_done_callback(finished)
                    continue
                slots.release()
                if result.held or answered:
                    continue  # all held for consent, or answers to record: look again at once
                wake.clear()
                timeout = cfg.consent_poll
                due = await self.outbox.next_due(
                    name, busy=[eid for ids in inflight.values() for eid in ids]
                )
                if due is not None:
                    timeout = max(0.01, min(timeout, due - self.outbox.now()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(wake, stop), timeout)
        finally:
            if leasing is not None and not leasing.done():  # cancelled while it ran: let it end
                try:
                    await leasing  # what it leased is not sent: its lease runs out
                except (Exception, asyncio.CancelledError) as exc:  # the clean-up below goes on
                    log.warning("drain %s: the last lease failed: %s", name, type(exc).__name__)
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            if answered:  # answers that came in while stopping: recorded, not sent again
                await record(answered)

    async def _deliver(self, name: str, batch: list[Envelope]) -> list[Outcome]:
        """One batch to its destination; its answers, for the drain loop to record."""
        try:
            return await self.uplinks[name].send(batch)
        except Exception as exc:  # an uplink bug must not lose or block readings
            log.error("uplink %s failed: %s", name, type(exc).__name__)
            log.debug("uplink failure", exc_info=True)
            return [
                Outcome(envelope_id=e.id, status=OutcomeStatus.RETRY, reason="uplink error")
                for e in batch
            ]

    def _report(self, name: str, outcomes: Sequence[Outcome]) -> None:
        """Recorded answers, as a delivery event."""
        if not outcomes:
            return
        counts = {s: sum(1 for o in outcomes if o.status is s) for s in OutcomeStatus}
        self.on_event(
            DeliveryEvent(
                name,
                counts[OutcomeStatus.DELIVERED],
                counts[OutcomeStatus.RETRY],
                counts[OutcomeStatus.REJECTED],
            )
        )

    async def consent_sync_loop(self, stop: asyncio.Event) -> None:
        """Fetch the bound patients' Consents from the record server now and then, so the cached
        decisions never expire while the server is reachable."""
        from gateway.consent.sync import ConsentSyncError, sync_consents

        section = self.config.consent
        assert section.sync_from is not None
        while not stop.is_set():
            try:
                result = await sync_consents(
                    self.consent,
                    self.config,
                    section.sync_from,
                    ttl=timedelta(hours=section.cache_hours),
                )
                log.info(
                    "consents synced from %s: %d patient(s), %d failure(s)",
                    section.sync_from,
                    result.patients,
                    len(result.failures),
                )
            except (ConsentSyncError, UplinkError, OSError) as exc:  # the cache holds for now
                log.warning("consent sync from %s failed: %s", section.sync_from, exc)
            except Exception as exc:  # a server's odd answer must not stop the gateway
                log.warning(
                    "consent sync from %s failed: %s", section.sync_from, type(exc).__name__
                )
                log.debug("consent sync failure", exc_info=True)
            for name in self.uplinks:
                self._wake[name].set()  # a new permit may release held readings
            await _sleep_or_stop(stop, section.sync_every_minutes * 60)

    async def purge_expired(self) -> int:
        """Drop readings that waited for consent longer than the retention limit."""
        days = self.config.outbox.consent_retention_days
        if days is None:
            return 0
        purged = await self.outbox.purge(
            held_before=self.outbox.now() - days * 86_400,
            reason=f"no consent within {days:g} days: purged unsent",
        )
        if purged:
            log.info("%d reading(s) waited for consent over %g days: purged", purged, days)
        return purged

    async def _audit_consent(self) -> None:
        """Copy new grants and revocations into the audit trail (the consent store is written by
        ``edge consent``; the gateway sees a change at its next decision)."""
        version = self.consent.version()
        if version == self._consent_version:
            return  # nothing written to the consent store since the last look
        grants = self.consent.grants()
        seen = tuple((g.id, g.revoked_at) for g in grants)
        if seen != self._consent_seen:
            await self.outbox.record_consent(grants)
            self._consent_seen = seen
        self._consent_version = version

    async def _release_permitted(self, name: str) -> None:
        """Held envelopes whose consent has come go back to pending. Looked at when the consent
        store changed, or ``consent_poll`` seconds after the last look (a period that starts
        later): not at every batch, where it would cost a database round trip each time."""
        version = self.consent.version()
        now = time.monotonic()
        last = self._release_looked.get(name)
        if (
            last is not None
            and last[0] == version
            and now - last[1] < self.config.outbox.consent_poll
        ):
            return
        self._release_looked[name] = (version, now)
        for destination, patient, category in await self.outbox.held_groups():
            if destination != name:
                continue
            decision = self.consent.decide(patient, category, destination)
            if decision.permit:
                released = await self.outbox.release_held(
                    destination, patient, category, str(decision)
                )
                log.info(
                    "consent granted: %d held envelopes released for %s", released, destination
                )

    async def idle(self) -> bool:
        """True when every emulated device is done and nothing deliverable is left."""
        if not all(e.done.is_set() for e in self.emulators):
            return False
        status = await self.outbox.status()
        for states in status.by_destination.values():
            if states.get(EnvelopeState.PENDING.value, 0):
                return False
        return True

    async def run(
        self, stop: asyncio.Event, *, until_idle: bool = False, radio: bool = True
    ) -> None:
        """The gateway; ``radio=False`` only drains the outbox (``edge records push``), with
        every pending envelope due now."""
        await self.outbox.open()
        await self.outbox.release_leases()
        await self._audit_consent()
        link: Link | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            for uplink in self.uplinks.values():
                await uplink.start()
            if radio:
                link = await self._open_link()
                tasks = [asyncio.create_task(self.ble_loop(link, stop), name="ble")]
            else:
                await self.outbox.make_due()
            tasks += [
                asyncio.create_task(self.drain_loop(n, stop), name=f"drain-{n}")
                for n in self.uplinks
            ]
            if self.config.consent.sync_from is not None:
                tasks.append(asyncio.create_task(self.consent_sync_loop(stop), name="consent"))
            next_purge = 0.0
            while not stop.is_set():
                await _sleep_or_stop(stop, 0.2)
                if self.outbox.now() >= next_purge:
                    await self.purge_expired()
                    next_purge = self.outbox.now() + PURGE_EVERY
                for task in tasks:
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if until_idle and await self.idle():
                    stop.set()
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for scale in self.emulators:
                await scale.detach()
            if link is not None:
                await link.close()
            for uplink in self.uplinks.values():
                with contextlib.suppress(Exception):
                    await uplink.close()
            await self.outbox.close()
            self.consent.close()


def _batch_size(dest: LocalDestination | MqttDestination | FhirDestination, config: Config) -> int:
    """Readings one send carries. A FHIR server takes a bundle of ``bundle_size``; in the
    fr-mesures form each reading is its own requests, so it is leased (and its consent checked)
    right before they go, one at a time."""
    if isinstance(dest, FhirDestination):
        return 1 if dest.profile_set == "fr-mesures" else dest.bundle_size
    return config.outbox.batch


def _fr_form(
    reading: Reading, patient: PatientRef, gateway: GatewayInfo, solution_oid: str
) -> tuple[bytes, EnvelopeState | None, str]:
    """(body, state, reason) of a reading in the fr-mesures form: a state when it is not sent
    there (skipped: nothing of it has a Mes form; quarantined: it cannot be mapped)."""
    try:
        return dumps(map_reading_fr(reading, patient, gateway, solution_oid=solution_oid)), None, ""
    except NotSendable as exc:
        return b"", EnvelopeState.SKIPPED, f"not sent in the fr-mesures form: {exc}"
    except MappingError as exc:
        return b"", EnvelopeState.QUARANTINED, f"cannot map to fr-mesures: {exc}"


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
