"""RecordStore against a real SQLite file: conditional create, references, search, export."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.uplinks.record_store import (
    EntryStatus,
    RecordStore,
    RecordStoreError,
    TransactionRejected,
)
from tests.uplinks.fhir_samples import (
    GATEWAY_EUI64,
    HEART_RATE,
    LOINC,
    MDC,
    OBSERVATION_ID_SYSTEM,
    PATIENT,
    PATIENT_SYSTEM,
    SCALE_EUI64,
    bundle,
    device_entry,
    dumps,
    if_none_exist,
    reading_body,
    reading_bundle,
)

PATIENT_TOKEN = f"{PATIENT_SYSTEM}|{PATIENT}"


@pytest.fixture
async def store(tmp_path: Path):
    async with RecordStore(tmp_path / "record.db") as opened:
        yield opened


async def test_opens_in_wal_with_synchronous_full(tmp_path: Path) -> None:
    path = tmp_path / "record.db"
    async with RecordStore(path) as store:
        assert await store.durability() == {"journal_mode": "wal", "synchronous": 2}
    with sqlite3.connect(path) as other:  # WAL is a property of the file itself
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_refuses_memory_and_a_database_it_cannot_set_up(tmp_path: Path) -> None:
    with pytest.raises(RecordStoreError):
        RecordStore(Path(":memory:"))
    # Another process holds the file in rollback-journal mode: WAL cannot be switched on.
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("CREATE TABLE x (y)")
        holder.execute("BEGIN")
        holder.execute("SELECT * FROM x").fetchall()
        store = RecordStore(path, busy_timeout=0.1)
        with pytest.raises(RecordStoreError):
            await store.open()
    finally:
        holder.close()


async def test_conditional_create_rewrites_references(store: RecordStore) -> None:
    body = reading_bundle("obs-1")
    scale_url, gateway_url, obs_url = (entry["fullUrl"] for entry in body["entry"])

    results = await store.apply_transaction(dumps(body))

    assert [r.status for r in results] == [EntryStatus.CREATED] * 3
    assert [r.resource_type for r in results] == ["Device", "Device", "Observation"]
    # A created resource takes a keyed id, not its fullUrl's uuid: the mappers derive those
    # from identifiers (the patient's), and stored ids are readable in the file.
    assert not {f"urn:uuid:{r.id}" for r in results} & {scale_url, gateway_url, obs_url}
    assert len({r.id for r in results}) == 3
    observation = await store.read(results[2].location)
    assert observation is not None
    assert observation["id"] == results[2].id
    assert observation["device"] == {"reference": f"Device/{results[0].id}"}
    assert observation["extension"][0]["valueReference"] == {"reference": f"Device/{results[1].id}"}
    assert "urn:uuid" not in json.dumps(observation, default=str)


async def test_replayed_bundle_is_deduplicated(store: RecordStore) -> None:
    body = reading_body("obs-1")

    first = await store.apply_transaction(body)
    second = await store.apply_transaction(body)

    assert [r.status for r in first] == [EntryStatus.CREATED] * 3
    assert [r.status for r in second] == [EntryStatus.EXISTS] * 3
    assert [r.id for r in second] == [r.id for r in first]
    assert await store.count(resource_type="Observation") == 1
    assert await store.count(resource_type="Device") == 2
    assert await store.count() == 3


async def test_same_reading_with_new_fullurls_still_deduplicated(store: RecordStore) -> None:
    # A re-mapped reading (fresh urn:uuids, same identifiers) finds the stored resources.
    first = await store.apply_transaction(reading_body("obs-1"))
    again = await store.apply_transaction(reading_body("obs-1"))
    assert [r.status for r in again] == [EntryStatus.EXISTS] * 3
    assert [r.id for r in again] == [r.id for r in first]
    assert await store.count() == 3


async def test_two_readings_share_one_device(store: RecordStore) -> None:
    first = await store.apply_transaction(reading_body("obs-1"))
    second = await store.apply_transaction(reading_body("obs-2", Decimal("66.1")))

    assert [r.status for r in second] == [
        EntryStatus.EXISTS,
        EntryStatus.EXISTS,
        EntryStatus.CREATED,
    ]
    assert await store.count(resource_type="Device") == 2
    observation = await store.read(second[2].location)
    assert observation is not None
    # The new Observation points at the device stored by the first bundle.
    assert observation["device"] == {"reference": f"Device/{first[0].id}"}
    assert observation["extension"][0]["valueReference"] == {"reference": f"Device/{first[1].id}"}


async def test_duplicate_identifier_inside_one_bundle_resolves_to_one_resource(
    store: RecordStore,
) -> None:
    body = reading_bundle("obs-1")
    body["entry"].append(device_entry(SCALE_EUI64))  # the scale a second time
    results = await store.apply_transaction(dumps(body))
    assert results[3].status is EntryStatus.EXISTS
    assert results[3].id == results[0].id
    assert await store.count(resource_type="Device") == 2


@pytest.mark.parametrize(
    "identifier",
    [
        "74E8FFFEFF051C00-0123456789-urn:oid:1.2.3-188736-20181113175903.00+4",
        "with|bar,comma$dollar\\backslash and space/é",
    ],
)
async def test_if_none_exist_is_decoded_and_unescaped(store: RecordStore, identifier: str) -> None:
    await store.apply_transaction(reading_body(identifier))
    again = await store.apply_transaction(reading_body(identifier))
    assert again[2].status is EntryStatus.EXISTS
    assert await store.count(resource_type="Observation") == 1
    (stored,) = await store.search()
    assert stored["identifier"][0]["value"] == identifier


async def test_if_none_exist_without_escaping_still_matches(store: RecordStore) -> None:
    # A sender that only percent-encodes: the first bar separates system and value.
    body = reading_bundle("ID-1|x y")
    body["entry"][2]["request"]["ifNoneExist"] = f"identifier={OBSERVATION_ID_SYSTEM}|ID-1%7Cx%20y"
    results = await store.apply_transaction(dumps(body))
    assert results[2].status is EntryStatus.CREATED


async def test_search_by_patient_code_and_time(store: RecordStore) -> None:
    other_patient = "9876543210"
    await store.apply_transaction(
        reading_body("w-1", Decimal("65.7"), effective="2024-03-01T07:30:00+01:00")
    )
    await store.apply_transaction(
        reading_body("w-2", Decimal("65.2"), effective="2024-03-02T07:30:00+01:00")
    )
    await store.apply_transaction(
        reading_body("hr-1", Decimal("61"), code=HEART_RATE, effective="2024-03-02T08:00:00Z")
    )
    await store.apply_transaction(
        reading_body("w-3", Decimal("80.0"), patient=other_patient, effective="2024-03-02")
    )

    def ids(found: list[dict[str, Any]]) -> list[str]:
        return [item["identifier"][0]["value"] for item in found]

    assert ids(await store.search(patient=PATIENT_TOKEN)) == ["w-1", "w-2", "hr-1"]
    assert ids(await store.search(patient=f"{PATIENT_SYSTEM}|{other_patient}")) == ["w-3"]
    assert ids(await store.search(code="29463-7")) == ["w-1", "w-3", "w-2"]  # LOINC
    assert ids(await store.search(code="149546")) == ["hr-1"]  # MDC
    assert ids(await store.search(code=f"{MDC}|188736", patient=PATIENT_TOKEN)) == ["w-1", "w-2"]
    assert await store.search(code=f"{LOINC}|188736") == []  # right code, wrong system

    march_2 = dt.datetime(2024, 3, 2, tzinfo=dt.UTC)
    # 2024-03-02T07:30:00+01:00 is 06:30Z: since is inclusive, until exclusive.
    assert ids(await store.search(patient=PATIENT_TOKEN, since=march_2)) == ["w-2", "hr-1"]
    assert ids(
        await store.search(since=march_2, until=dt.datetime(2024, 3, 2, 6, 30, tzinfo=dt.UTC))
    ) == ["w-3"]
    paris = dt.timezone(dt.timedelta(hours=1))
    assert ids(
        await store.search(
            until=dt.datetime(2024, 3, 2, 7, 30, tzinfo=paris), patient=PATIENT_TOKEN
        )
    ) == ["w-1"]
    assert await store.count(patient=PATIENT_TOKEN, code="29463-7") == 2
    assert await store.search(resource_type="Device", code="29463-7") == []
    devices = await store.search(resource_type="Device")
    assert sorted(d["identifier"][0]["value"] for d in devices) == [GATEWAY_EUI64, SCALE_EUI64]

    with pytest.raises(ValueError, match=r"SYSTEM\|VALUE"):
        await store.search(patient=PATIENT)
    with pytest.raises(ValueError):
        await store.search(since=dt.datetime(2024, 3, 2))  # naive time is ambiguous


async def test_export_ndjson_devices_then_observations(store: RecordStore) -> None:
    await store.apply_transaction(reading_body("obs-1"))
    await store.apply_transaction(reading_body("obs-2", device="00-11-22-FF-FE-33-44-55"))

    out = io.StringIO()
    written = await store.export_ndjson(out)

    lines = out.getvalue().splitlines()
    assert written == len(lines) == 5
    assert out.getvalue().endswith("\n")
    resources = [json.loads(line) for line in lines]
    assert [r["resourceType"] for r in resources] == ["Device"] * 3 + ["Observation"] * 2
    assert [r["identifier"][0]["value"] for r in resources[3:]] == ["obs-1", "obs-2"]
    assert all(r["id"] for r in resources)


async def test_decimal_text_is_kept_exactly(store: RecordStore) -> None:
    # Number texts as a device/mapper may write them; written into the body verbatim.
    values = ["65.700", "0.0000001", "1.0E+2", "-0.50", "70", "1e-3"]
    for index, text in enumerate(values):
        body = reading_body(f"obs-{index}", Decimal(777), effective=f"2024-03-0{index + 1}")
        body = body.replace(b'"value":777,', f'"value":{text},'.encode())
        assert f'"value":{text},'.encode() in body
        await store.apply_transaction(body)

    out = io.StringIO()
    await store.export_ndjson(out)
    exported = out.getvalue()
    for text in values:
        assert f'"value":{text},' in exported

    found = await store.search(code="29463-7")
    got = [item["valueQuantity"]["value"] for item in found]
    assert got == [Decimal(text) for text in values]
    assert str(got[0]) == "65.700"
    assert all(isinstance(value, Decimal | int) for value in got)


async def test_stored_text_keeps_other_numbers_and_unicode(store: RecordStore) -> None:
    body = reading_bundle("obs-1")
    observation = body["entry"][2]["resource"]
    observation["note"] = [{"text": 'après le café ☕ "quoted"\nline 2'}]
    observation["referenceRange"] = [{"low": {"value": Decimal("12345678901234567890123")}}]
    await store.apply_transaction(dumps(body))

    out = io.StringIO()
    await store.export_ndjson(out)
    line = out.getvalue().splitlines()[-1]
    assert '"value":12345678901234567890123}' in line
    assert json.loads(line)["note"][0]["text"] == 'après le café ☕ "quoted"\nline 2'


def _break(body: dict[str, Any], how: str) -> bytes:
    broken = copy.deepcopy(body)
    entries = broken["entry"]
    if how == "not json":
        return b'{"resourceType": "Bundle", "type": "transaction", "entry": ['
    if how == "nan":
        return dumps(broken).replace(b'"value":65.700', b'"value":NaN')
    if how == "not a bundle":
        broken["resourceType"] = "Parameters"
    elif how == "batch":
        broken["type"] = "batch"
    elif how == "no entries":
        broken["entry"] = []
    elif how == "unknown type":
        entries[2]["resource"]["resourceType"] = "MedicationRequest"
        entries[2]["request"]["url"] = "MedicationRequest"
    elif how == "no identifier":
        del entries[2]["resource"]["identifier"]
        del entries[2]["request"]["ifNoneExist"]
    elif how == "if-none-exist mismatch":
        entries[2]["request"]["ifNoneExist"] = if_none_exist(OBSERVATION_ID_SYSTEM, "other")
    elif how == "several values":
        entries[2]["request"]["ifNoneExist"] = f"identifier={OBSERVATION_ID_SYSTEM}|a,b"
    elif how == "unsupported search":
        entries[2]["request"]["ifNoneExist"] = "code=29463-7"
    elif how == "bad fullUrl":
        entries[0]["fullUrl"] = "Device/123"
    elif how == "unresolved reference":
        entries[2]["resource"]["device"] = {
            "reference": "urn:uuid:00000000-0000-4000-8000-000000000000"
        }
    elif how == "same uuid twice":
        entries[1]["fullUrl"] = entries[0]["fullUrl"].upper().replace("URN:UUID:", "urn:uuid:")
    elif how == "put":
        entries[2]["request"]["method"] = "PUT"
    elif how == "bad effective":
        entries[2]["resource"]["effectiveDateTime"] = "yesterday"
    elif how == "naive effective":
        entries[2]["resource"]["effectiveDateTime"] = "2024-03-01T07:30:00"
    else:  # pragma: no cover
        raise AssertionError(how)
    return dumps(broken)


@pytest.mark.parametrize(
    "how",
    [
        "not json",
        "nan",
        "not a bundle",
        "batch",
        "no entries",
        "unknown type",
        "no identifier",
        "if-none-exist mismatch",
        "unsupported search",
        "several values",
        "bad fullUrl",
        "unresolved reference",
        "same uuid twice",
        "put",
        "bad effective",
        "naive effective",
    ],
)
async def test_bad_bundle_is_rejected_whole(store: RecordStore, how: str) -> None:
    body = reading_bundle("obs-secret-identifier")

    with pytest.raises(TransactionRejected) as caught:
        await store.apply_transaction(_break(body, how))

    # All-or-nothing: the valid Device entries of the same bundle were not written either.
    assert await store.count() == 0
    reason = caught.value.reason
    assert reason
    for secret in ("obs-secret-identifier", PATIENT, SCALE_EUI64, "65.7"):
        assert secret not in reason
    # The store is still usable.
    await store.apply_transaction(dumps(body))
    assert await store.count() == 3


async def test_fullurl_uuid_already_used_by_another_resource(store: RecordStore) -> None:
    first = reading_bundle("obs-1")
    await store.apply_transaction(dumps(first))
    clash = reading_bundle("obs-2")
    clash["entry"][2]["fullUrl"] = first["entry"][2]["fullUrl"]
    for entry in clash["entry"]:  # keep the internal references consistent
        if entry["resource"]["resourceType"] == "Observation":
            entry["resource"]["device"]["reference"] = clash["entry"][0]["fullUrl"]
    with pytest.raises(TransactionRejected, match="already used"):
        await store.apply_transaction(dumps(clash))
    assert await store.count(resource_type="Observation") == 1


async def test_batch_keeps_each_bundle_atomic(store: RecordStore) -> None:
    results = await store.apply_transactions(
        [reading_body("obs-1"), b"not json", reading_body("obs-2"), reading_body("obs-1")]
    )
    assert isinstance(results[1], TransactionRejected)
    statuses = [
        [r.status for r in result] for result in results if not isinstance(result, Exception)
    ]
    assert statuses == [
        [EntryStatus.CREATED] * 3,
        [EntryStatus.EXISTS, EntryStatus.EXISTS, EntryStatus.CREATED],
        [EntryStatus.EXISTS] * 3,
    ]
    assert await store.count(resource_type="Observation") == 2


async def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "record.db"
    async with RecordStore(path) as store:
        first = await store.apply_transaction(reading_body("obs-1"))
    async with RecordStore(path) as store:
        again = await store.apply_transaction(reading_body("obs-1"))
        assert [r.status for r in again] == [EntryStatus.EXISTS] * 3
        assert [r.id for r in again] == [r.id for r in first]
        assert await store.count() == 3
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_patient_reference_to_a_patient_entry(store: RecordStore) -> None:
    body = reading_bundle("obs-1")
    patient_entry = {
        "fullUrl": "urn:uuid:5b0c2a5e-7d43-4d0e-9b53-1d1c6f1f7a10",
        "resource": {
            "resourceType": "Patient",
            "identifier": [{"system": PATIENT_SYSTEM, "value": PATIENT}],
        },
        "request": {
            "method": "POST",
            "url": "Patient",
            "ifNoneExist": if_none_exist(PATIENT_SYSTEM, PATIENT),
        },
    }
    body["entry"][2]["resource"]["subject"] = {"reference": patient_entry["fullUrl"]}
    results = await store.apply_transaction(dumps(bundle(patient_entry, *body["entry"])))
    found = await store.search(patient=PATIENT_TOKEN)
    assert [item["subject"] for item in found] == [{"reference": f"Patient/{results[0].id}"}]
    assert len(await store.search(resource_type="Patient", patient=PATIENT_TOKEN)) == 1


async def test_rejected_bundle_leaves_no_trace_for_the_rest_of_the_batch(
    store: RecordStore,
) -> None:
    stored = reading_bundle("obs-stored")
    await store.apply_transaction(dumps(stored))
    new_scale = "00-11-22-FF-FE-33-44-55"
    # Its Observation reuses a logical id already in the store: rejected at planning time,
    # after its new scale Device was planned.
    clashing = reading_bundle("obs-clash", device=new_scale)
    clashing["entry"][2]["fullUrl"] = stored["entry"][2]["fullUrl"]
    later = reading_bundle("obs-later", device=new_scale)

    results = await store.apply_transactions([dumps(clashing), dumps(later)])

    assert isinstance(results[0], TransactionRejected)
    assert not isinstance(results[1], TransactionRejected)
    scale = results[1][0]
    assert scale.status is EntryStatus.CREATED
    assert await store.read(scale.location) is not None
    assert await store.count(resource_type="Device") == 3


async def test_large_batch_sharing_devices(store: RecordStore) -> None:
    bodies = [reading_body(f"obs-{i}") for i in range(300)]  # more keys than one query takes

    first = await store.apply_transactions(bodies)
    replay = await store.apply_transactions(bodies)

    assert not any(isinstance(r, TransactionRejected) for r in first + replay)
    assert await store.count(resource_type="Observation") == 300
    assert await store.count(resource_type="Device") == 2
    assert all(
        [e.status for e in r] == [EntryStatus.EXISTS] * 3
        for r in replay
        if not isinstance(r, TransactionRejected)
    )
    scale_ids = {r[0].id for r in first if not isinstance(r, TransactionRejected)}
    assert len(scale_ids) == 1
