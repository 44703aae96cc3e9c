"""Encryption at rest of stored values: AES-256-GCM, one random 96-bit nonce per value.

A sealed value is ``version (1 byte) | key id (4 bytes) | nonce (12 bytes) | ciphertext + tag``.
The key id (the first 4 bytes of HMAC-SHA256(key, "edge key id")) tells "sealed under another
key" (a rotation this process missed, the wrong key file) apart from "tampered": both fail, but
only tampering is the value's fault. The associated data binds each value to its row and column
(``readings.payload|<reading key>``...): a ciphertext copied to another row or column does not
open.

The key (32 bytes) comes from, in this order:

1. the environment variable ``EDGE_DATA_KEY`` (base64 or hex);
2. the systemd credential ``$CREDENTIALS_DIRECTORY/edge-data-key`` (raw 32 bytes, base64 or hex);
3. ``<data dir>/data.key`` (base64), created on first use with mode 0600; a key file readable or
   writable by group or others is refused (``gateway.config``'s rule for secret files).

See docs/encryption.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import _too_open_for_a_secret
from gateway.errors import GatewayError

log = logging.getLogger(__name__)

VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_BYTES = 4
HEADER = 1 + KEY_ID_BYTES + NONCE_BYTES
ENV_VAR = "EDGE_DATA_KEY"
NEW_ENV_VAR = "EDGE_DATA_KEY_NEW"  # the next key, while ``edge keys rotate`` replaces one given
CREDENTIAL = "edge-data-key"
KEY_FILE = "data.key"


class DataKeyError(GatewayError):
    """No usable data key (missing, malformed, too open)."""


class SealedByAnotherKey(GatewayError):
    """The value was sealed under another key than the one loaded (rotated, wrong key)."""


class Tampered(GatewayError):
    """The value does not authenticate under the key it names: changed, moved or truncated."""


def key_id(key: bytes) -> bytes:
    return hmac.new(key, b"edge key id", hashlib.sha256).digest()[:KEY_ID_BYTES]


class Cipher:
    """AES-256-GCM with one key; ``seal``/``open`` values with their associated data."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise DataKeyError(f"a data key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self.key_id = key_id(key)
        self._prefix = bytes([VERSION]) + self.key_id

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)  # what secrets.token_bytes calls, three calls deep
        return self._prefix + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        """The plaintext; ``SealedByAnotherKey`` or ``Tampered`` if it does not open."""
        if len(sealed) < HEADER + 16 or sealed[0] != VERSION:
            raise Tampered("not a sealed value (version or length)")
        if sealed[1 : 1 + KEY_ID_BYTES] != self.key_id:
            raise SealedByAnotherKey("sealed under another key")
        try:
            return self._aead.decrypt(sealed[1 + KEY_ID_BYTES : HEADER], sealed[HEADER:], aad)
        except InvalidTag:
            raise Tampered("stored data failed authentication (tampered or wrong key)") from None

    def seal_text(self, text: str, aad: bytes) -> bytes:
        return self.seal(text.encode(), aad)

    def open_text(self, sealed: bytes, aad: bytes) -> str:
        return self.open(sealed, aad).decode()


def is_sealed(value: object) -> bool:
    """Whether a stored value looks sealed (a blob with the header), not older plaintext."""
    return isinstance(value, bytes) and len(value) >= HEADER + 16 and value[0] == VERSION


# -- keys -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeySource:
    key: bytes | None
    where: str  # what was used, or what was looked at (for error messages)
    file: Path | None  # the key file, when the key is (or would be) in the data directory


def parse_key(text: bytes, where: str) -> bytes:
    """32 bytes given raw (a credential file), as hex or as base64."""
    if len(text) == KEY_BYTES:
        return text
    stripped = text.strip()
    for decode in (binascii.unhexlify, base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(stripped)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise DataKeyError(f"{where} does not hold a {KEY_BYTES}-byte key (hex or base64)")


def looked_at(data_dir: Path) -> str:
    """Where keys are looked for, in words."""
    return (
        f"the environment variable {ENV_VAR}, the systemd credential {CREDENTIAL}"
        f" ($CREDENTIALS_DIRECTORY), the key file {data_dir / KEY_FILE}"
    )


def find_key(data_dir: Path) -> KeySource:
    """The data key from the first source that has one; ``key=None`` if none has."""
    value = os.environ.get(ENV_VAR)
    if value:
        return KeySource(parse_key(value.encode(), f"${ENV_VAR}"), f"${ENV_VAR}", None)
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = Path(credentials) / CREDENTIAL
        if path.exists():
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DataKeyError(f"cannot read the credential {path}: {exc}") from exc
            return KeySource(parse_key(data, f"credential {path}"), f"credential {path}", None)
    path = data_dir / KEY_FILE
    if not path.exists():
        return KeySource(None, looked_at(data_dir), path)
    return KeySource(read_key_file(path), str(path), path)


def read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode & 0o777
        if os.name == "posix" and mode & _too_open_for_a_secret(path):
            raise DataKeyError(
                f"{path} (the data key) is readable by group or others (mode {mode:04o});"
                f" a secret must be private to the user edge runs as. Fix: chmod 600 {path}"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise DataKeyError(f"cannot read the data key {path}: {exc}") from exc
    return parse_key(data, str(path))


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def create_key_file(path: Path) -> bytes:
    """A new key in ``path`` (0600), or the one already there: another process or store of the
    same data directory may make it at the same moment, and one of them must not overwrite the
    other's (what it sealed would be lost). The file appears whole (link of a fsynced file)."""
    key = new_key()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if the file exists: never replaces a key
    except FileExistsError:
        return read_key_file(path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_dir(path.parent)
    return key


def write_key_file(path: Path, key: bytes) -> None:
    """Write ``key`` to ``path`` atomically (a 0600 temporary file, fsync, rename, fsync of the
    directory): a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask, or a leftover temporary file's mode
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- opening a store --------------------------------------------------------------------------
CHECK_TEXT = b"edge outbox data key"
"""What each store seals under its key (its key check), to tell the right key at open."""


def leftover_keys(source: KeySource) -> list[tuple[bytes, str]]:
    """The key a store may still be sealed under after an interrupted ``edge keys rotate``
    with the key file: ``data.key.old``. (``$EDGE_DATA_KEY_NEW`` is read by the rotation only:
    as a key every command tried, it would let any command undo a finished rotation.)"""
    if source.file is not None:
        old = source.file.with_name(source.file.name + ".old")
        if old.exists():
            return [(read_key_file(old), str(old))]
    return []


# -- the stores sealed with a data directory's key ---------------------------------------------
STORES_FILE = "sealed-stores"
"""``<key dir>/sealed-stores``: one line per store ever opened with this directory's key
(``outbox <path>`` or ``record <path>``), so that a rotation finds every one of them, wherever
it lives (a ``local`` destination's path, a file opened with ``--path``)."""


def register_store(key_dir: Path, kind: str, path: Path) -> None:
    """Add a store to ``sealed-stores`` (once; appended and fsynced: lines are never lost).

    A registry that cannot be read or written (made by another user, a full disk) is logged,
    not fatal: the store itself is fine, and ``edge keys rotate`` still finds the outbox and the
    configured records."""
    line = f"{kind} {path.resolve()}"
    try:
        if line in registered_lines(key_dir):
            return
        fd = os.open(key_dir / STORES_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("%s cannot be updated (%s): a key rotation may miss %s", STORES_FILE, exc, kind)


def registered_lines(key_dir: Path) -> list[str]:
    try:
        text = (key_dir / STORES_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def registered_stores(key_dir: Path, kind: str) -> list[Path]:
    """The stores of one kind registered for this key directory, in registration order."""
    found = []
    for line in registered_lines(key_dir):
        what, _, where = line.partition(" ")
        if what == kind and where:
            found.append(Path(where))
    return found


@dataclass(frozen=True, slots=True)
class Unlocked:
    """The key a store seals under from now on, and what its values are sealed under today."""

    cipher: Cipher
    where: str
    new: bool  # the store had no key check: new, or from before encryption
    behind: Cipher | None = None  # sealed under a leftover key: re-seal under ``cipher`` now


def unlock(
    store: Path,
    check: bytes | None,
    key_dir: Path,
    *,
    create: bool,
    extra: Sequence[bytes] = (),
) -> Unlocked:
    """The data key for ``store`` whose key check is ``check`` (None: it has none yet).

    A store without a check gets the current key, made now (the key file) when ``create`` and
    no source has one. A store with a check must open it: under the current key, or under a
    key an interrupted rotation left, in which case the caller re-seals it under the current
    one (``behind``): each store of a data directory finishes the rotation when next opened.
    ``extra``: more keys the store may be under (the rotation's new key, given in the
    environment). Raises ``DataKeyError`` naming what was looked at, never treats a store as
    empty."""
    source = find_key(key_dir)
    if check is None:
        key = source.key
        if key is None and not create:
            raise DataKeyError(
                f"{store} has no data key yet (looked at {source.where}): the gateway makes it"
                " at its first start (edge run); or give the one it uses"
            )
        if key is None:
            assert source.file is not None
            key = create_key_file(source.file)
            source = KeySource(key, str(source.file), source.file)
        return Unlocked(Cipher(key), source.where, new=True)
    if source.key is None:
        raise DataKeyError(
            f"{store} is encrypted but its data key was not found (looked at {source.where});"
            f" restore the key (from a backup of {source.file}, or the environment or"
            " credential the gateway was given): without it the stored readings cannot be read"
        )
    current = Cipher(source.key)
    candidates = [(source.key, source.where), *leftover_keys(source)]
    candidates += [(key, "the new key") for key in extra]
    for key, _where in candidates:
        cipher = current if key == source.key else Cipher(key)
        try:
            cipher.open(check, CHECK_AAD)
        except (SealedByAnotherKey, Tampered):
            continue
        behind = None if cipher is current else cipher
        return Unlocked(current, source.where, new=False, behind=behind)
    raise DataKeyError(
        f"{store}: the data key from {source.where} is not the key its readings were"
        f" encrypted with (wrong key, or another gateway's); give the right one"
        f" (looked at {looked_at(key_dir)})"
    )


CHECK_AAD = b"data-key-check"


def remove_leftovers(key_file: Path) -> None:
    """Forget an interrupted rotation's files, once every store is sealed under ``key_file``."""
    removed = False
    leftovers = [key_file.with_name(key_file.name + suffix) for suffix in (".old", ".new")]
    leftovers += list(key_file.parent.glob(f"{key_file.name}*.tmp"))  # interrupted writes
    for leftover in leftovers:
        if leftover.exists():
            leftover.unlink(missing_ok=True)
            removed = True
    if removed:
        sync_dir(key_file.parent)
