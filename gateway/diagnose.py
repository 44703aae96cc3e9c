"""``edge diagnose``: a support bundle that can be mailed to a maintainer as it is.

What it holds: versions; the configuration with patient identifiers masked and secrets left out
(consent codes, passkeys; key, password, token and client-secret files are named, never opened);
the destinations; outbox counts per destination and state, skipped and quarantine reasons; consent
grants per destination (patients masked); the data directory's files with sizes and modes; and a
permission report (what ``load_config`` refuses, what should be tightened).

What it never holds: a health value or a patient identifier in clear. Every string goes through a
``Redactor`` that knows the configuration's patients before it is printed.
"""

from __future__ import annotations

import os
import platform
import shlex
import sqlite3
import stat
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from gateway.config import (
    Config,
    demo_config,
    load_config,
    permission_problems,
    secret_files,
)
from gateway.errors import ConfigError
from gateway.privacy import Redactor, mask_patient

PACKAGES = (
    "edge-gateway",
    "bleak",
    "bumble",
    "paho-mqtt",
    "pydantic",
    "httpx",
    "aiosqlite",
    "cryptography",
    "orjson",
    "typer",
)
_MAX_FILES = 200


@dataclass
class Check:
    """One line of the permission report."""

    status: str  # ok | refused | warning | missing
    what: str
    path: str
    mode: str = ""
    note: str = ""


@dataclass
class Bundle:
    versions: dict[str, str] = field(default_factory=dict)
    config_file: str | None = None
    config_error: str | None = None
    config: dict[str, Any] | None = None
    destinations: list[dict[str, str]] = field(default_factory=list)
    data_dir: str = ""
    outbox: dict[str, Any] | None = None
    consent: dict[str, Any] | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    permissions: list[Check] = field(default_factory=list)


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["python"] = f"{platform.python_implementation()} {platform.python_version()}"
    found["sqlite"] = sqlite3.sqlite_version
    found["os"] = platform.platform()
    return found


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None


def _sanitized(config: Config) -> dict[str, Any]:
    """The configuration as data: patients masked, consent codes and passkeys left out."""
    data = config.model_dump(mode="json")
    for binding in data.get("bindings", []):
        binding["patient"] = mask_patient(binding["patient"])
        if binding.get("consent_code") is not None:
            binding["consent_code"] = "(set, not shown)"
    link = data.get("link", {})
    if link.get("passkeys"):
        link["passkeys"] = {address: "(set, not shown)" for address in link["passkeys"]}
    return data


def _permissions(config_file: Path | None, config: Config | None, data_dir: Path) -> list[Check]:
    checks: list[Check] = []
    refused = {p.path: p for p in permission_problems(config_file, config)}
    if config_file is not None:
        mode = _mode(config_file)
        if mode is None:
            checks.append(Check("missing", "configuration", str(config_file)))
        elif config_file in refused:
            checks.append(
                Check(
                    "refused",
                    "configuration",
                    str(config_file),
                    f"{mode:04o}",
                    f"writable by group or others: {refused[config_file].fix}",
                )
            )
        elif mode & 0o044 and config is not None and (config.bindings or config.link.passkeys):
            checks.append(
                Check(
                    "warning",
                    "configuration",
                    str(config_file),
                    f"{mode:04o}",
                    "readable by group or others and holds patient identifiers (and consent"
                    f" codes or passkeys): chmod 600 {shlex.quote(str(config_file))}",
                )
            )
        else:
            checks.append(Check("ok", "configuration", str(config_file), f"{mode:04o}"))
    for what, path in secret_files(config) if config is not None else []:
        mode = _mode(path)
        if mode is None:
            checks.append(Check("missing", what, str(path), note="cannot be read"))
        elif path in refused:
            checks.append(
                Check(
                    "refused",
                    what,
                    str(path),
                    f"{mode:04o}",
                    f"readable by group or others: {refused[path].fix}",
                )
            )
        else:
            checks.append(Check("ok", what, str(path), f"{mode:04o}"))
    mode = _mode(data_dir)
    if mode is None:
        checks.append(Check("missing", "data_dir", str(data_dir), note="nothing stored yet"))
        return checks
    if mode & 0o077:
        checks.append(
            Check(
                "warning",
                "data_dir",
                str(data_dir),
                f"{mode:04o}",
                f"open to group or others: chmod 700 {shlex.quote(str(data_dir))}",
            )
        )
    else:
        checks.append(Check("ok", "data_dir", str(data_dir), f"{mode:04o}"))
    for path in _data_files(data_dir):
        mode = _mode(path)
        if mode is not None and mode & 0o077:
            checks.append(
                Check(
                    "warning",
                    "data file",
                    str(path),
                    f"{mode:04o}",
                    "open to group or others (the data directory holds health data and keys):"
                    f" chmod 600 {shlex.quote(str(path))}",
                )
            )
    return checks


def _data_files(data_dir: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(data_dir):
        dirs.sort()
        for name in sorted(names):
            files.append(Path(root) / name)
            if len(files) >= _MAX_FILES:
                return files
    return files


def _files(data_dir: Path) -> list[dict[str, Any]]:
    listed = []
    for path in _data_files(data_dir):
        try:
            info = path.stat()
        except OSError:
            continue
        listed.append(
            {
                "path": str(path.relative_to(data_dir)),
                "size": info.st_size,
                "mode": f"{stat.S_IMODE(info.st_mode):04o}",
            }
        )
    return listed


def _outbox(path: Path) -> dict[str, Any]:
    """Read-only: a support bundle neither migrates an older outbox nor needs its data key."""
    from gateway.outbox.store import read_status

    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        status = read_status(conn, quarantine_limit=1_000_000)
    finally:
        conn.close()
    reasons: Counter[tuple[str, str]] = Counter(
        (q["destination"] or f"{q['source']} (device)", q["reason"] or "")
        for q in status.quarantined
    )
    return {
        "readings": status.readings,
        "unattributed": status.unattributed,
        "by_destination": status.by_destination,
        "skipped": status.skipped,
        "quarantined": len(status.quarantined),
        "quarantine_reasons": [
            {"where": where, "reason": reason, "count": count}
            for (where, reason), count in sorted(reasons.items())
        ],
    }


def _consent(path: Path) -> dict[str, Any]:
    from gateway.consent import ConsentStore

    store = ConsentStore(path)
    try:
        grants = store.grants()
    finally:
        store.close()
    per: dict[str, dict[str, Any]] = {}
    for grant in grants:
        entry = per.setdefault(
            grant.destination, {"active": 0, "revoked": 0, "patients": set(), "categories": set()}
        )
        entry["revoked" if grant.revoked_at else "active"] += 1
        entry["patients"].add(mask_patient(grant.patient))
        entry["categories"].add(grant.category)
    return {
        destination: {
            "active": entry["active"],
            "revoked": entry["revoked"],
            "patients": sorted(entry["patients"]),
            "categories": sorted(entry["categories"]),
        }
        for destination, entry in sorted(per.items())
    }


def collect(config_file: Path | None, data_dir: Path | None, default_data_dir: Path) -> Bundle:
    """Everything ``edge diagnose`` shows, already masked."""
    bundle = Bundle(versions=versions())
    config: Config | None = None
    if config_file is not None:
        bundle.config_file = str(config_file)
        try:
            config = load_config(config_file, check_permissions=False)
        except ConfigError as exc:
            bundle.config_error = str(exc)
    else:
        config = demo_config(data_dir or default_data_dir)
    if config is not None:
        directory = data_dir or config.gateway.data_dir
        bundle.config = _sanitized(config)
        bundle.destinations = [{"name": d.name, "type": d.type} for d in config.destinations]
    else:
        directory = data_dir or default_data_dir
    bundle.data_dir = str(directory)
    outbox = directory / "outbox.sqlite"
    if outbox.exists():
        try:
            bundle.outbox = _outbox(outbox)
        except Exception as exc:  # a support bundle reports what it cannot read
            bundle.outbox = {"error": f"{type(exc).__name__}: {exc}"}
    consent = directory / "consent.sqlite"
    if consent.exists():
        try:
            bundle.consent = _consent(consent)
        except Exception as exc:
            bundle.consent = {"error": f"{type(exc).__name__}: {exc}"}
    if directory.is_dir():
        bundle.files = _files(directory)
    bundle.permissions = _permissions(config_file, config, directory)
    known = [b.patient for b in config.bindings] if config is not None else []
    return _masked(bundle, Redactor(known))


def _masked(bundle: Bundle, redactor: Redactor) -> Bundle:
    """The last safety net: every string of the bundle through the redactor."""
    return Bundle(
        versions=redactor.redact_tree(bundle.versions),
        config_file=redactor.redact_tree(bundle.config_file),
        config_error=redactor.redact_tree(bundle.config_error),
        config=redactor.redact_tree(bundle.config),
        destinations=redactor.redact_tree(bundle.destinations),
        data_dir=redactor.redact(bundle.data_dir),
        outbox=redactor.redact_tree(bundle.outbox),
        consent=redactor.redact_tree(bundle.consent),
        files=redactor.redact_tree(bundle.files),
        permissions=[
            Check(*(redactor.redact(v) for v in (c.status, c.what, c.path, c.mode, c.note)))
            for c in bundle.permissions
        ],
    )


def as_json(bundle: Bundle) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(bundle)


def render(bundle: Bundle) -> str:
    """The bundle as text, one fact a line."""
    out = [
        "edge diagnose: support bundle (patient identifiers masked, no health values, no secrets)",
        "",
        "versions",
    ]
    width = max(len(k) for k in bundle.versions)
    out += [f"  {name:<{width}}  {version}" for name, version in bundle.versions.items()]
    out.append("")
    if bundle.config_file is None:
        out.append("configuration: none given (the built-in demo)")
    else:
        out.append(f"configuration: {bundle.config_file}")
    if bundle.config_error:
        out.append(f"  INVALID: {bundle.config_error}")
    if bundle.config is not None:
        out += [f"  {line}" for line in _flatten(bundle.config)]
        out.append("")
        out.append(f"destinations ({len(bundle.destinations)})")
        out += [f"  {d['name']}: {d['type']}" for d in bundle.destinations]
    out.append("")
    out.append(f"outbox ({bundle.data_dir}/outbox.sqlite)")
    if bundle.outbox is None:
        out.append("  none yet")
    elif "error" in bundle.outbox:
        out.append(f"  cannot read: {bundle.outbox['error']}")
    else:
        o = bundle.outbox
        out.append(
            f"  readings stored: {o['readings']} (unattributed, never sent: {o['unattributed']})"
        )
        for destination, states in sorted(o["by_destination"].items()):
            detail = ", ".join(f"{k}={v}" for k, v in sorted(states.items()))
            out.append(f"  {destination}: {detail}")
        for k in o["skipped"]:
            out.append(f"  skipped {k['destination']}: {k['count']} x {k['reason']}")
        out.append(f"  quarantined: {o['quarantined']}")
        for q in o["quarantine_reasons"]:
            out.append(f"    {q['where']}: {q['count']} x {q['reason']}")
    out.append("")
    out.append(f"consent ({bundle.data_dir}/consent.sqlite)")
    if bundle.consent is None:
        out.append("  none recorded: nothing is sent anywhere")
    elif "error" in bundle.consent:
        out.append(f"  cannot read: {bundle.consent['error']}")
    else:
        for destination, c in bundle.consent.items():
            out.append(
                f"  {destination}: {c['active']} active, {c['revoked']} revoked grant(s);"
                f" {len(c['patients'])} patient(s) {', '.join(c['patients'])};"
                f" categories {', '.join(c['categories'])}"
            )
    out.append("")
    out.append(f"data directory: {bundle.data_dir}")
    if not bundle.files:
        out.append("  (empty or missing)")
    for f in bundle.files:
        out.append(f"  {f['mode']}  {f['size']:>12}  {f['path']}")
    out.append("")
    out.append("permissions")
    for c in bundle.permissions:
        mode = f" {c.mode}" if c.mode else ""
        note = f": {c.note}" if c.note else ""
        out.append(f"  {c.status:<8} {c.what} {c.path}{mode}{note}")
    return "\n".join(out)


def _flatten(data: Any, prefix: str = "") -> list[str]:
    """``destinations.0.host = broker.example.org``, one setting a line (None left out)."""
    if isinstance(data, dict):
        lines = []
        for key, value in data.items():
            lines += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return lines
    if isinstance(data, list):
        if all(not isinstance(v, dict | list) for v in data):
            return [f"{prefix} = {data}"] if data else []
        lines = []
        for i, value in enumerate(data):
            lines += _flatten(value, f"{prefix}.{i}")
        return lines
    if data is None:
        return []
    return [f"{prefix} = {data}"]


__all__ = ["Bundle", "Check", "as_json", "collect", "render"]
