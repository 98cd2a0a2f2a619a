# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Chunk ids, compression and encryption of repository objects (the "blob envelope").

Every object the repository stores (chunk, disk manifest, backup record, catalog, verify status)
is wrapped in one envelope (docs/repository.md, "Object envelope")::

    magic (4 bytes) | kind (1 byte) | flags (1 byte) | [salt (16) | nonce (12) if encrypted] | body | [checksum if plain]

magic b"HVB5" and a 16-byte XXH3-128 checksum in a repository of format version 5; b"HVB3" and a 32-byte
BLAKE3 checksum in one of format version 4 (release 0.1.0), which is still read and written as such: a
repository keeps the envelope of the format it was created with, so the release that made it can still read it.

``flags`` bit 0: the body is zstd-compressed; bit 1: the body is AES-256-GCM ciphertext (tag appended);
bit 2: an XXH3-128 checksum of header, name and body follows the body; bit 3: the plaintext inside the
ciphertext is ``length (8 bytes) | body | zero bytes`` (padding, encrypted repositories only), so the
padding and the true length are authenticated with the rest.

Each encrypted object has a key of its own: HKDF-SHA256 of the data key with the object's random salt and
the kind as info (as kopia derives per-content keys). One key for every object with random 96-bit nonces
would be safe only below about 2**32 objects (the nonce-collision bound of AES-GCM); with per-object keys a
nonce never meets the same key twice in practice. The authenticated data of the cipher is the 6 header bytes,
the salt and the object's name, so a ciphertext moved to another name (e.g. chunk A renamed to chunk B) fails
authentication. A plain object carries the checksum instead, for the same reason: a bit flip in a manifest or
record that is stored as is (too small to compress) would otherwise change a backup silently, and a
stored-as-is chunk would only be caught by a full verify.

The checksum is XXH3-128 from format 5 on (BLAKE3 before): it only has to catch damage, not an attacker.
Anyone who can write a plain repository can recompute any unkeyed checksum, cryptographic or not, so a
cryptographic one bought nothing there, and it cost a second BLAKE3 pass over every stored byte (~10 % of a
full backup's CPU, docs/benchmarks/backup.md); XXH3 runs at ~15 GB/s per core against ~3 for BLAKE3. What
protects content from substitution is unchanged: the chunk id (BLAKE3 of the plaintext) checked at read, and
in an encrypted repository the AES-GCM tag. Borg made the same split (xxh64 for storage integrity, a
cryptographic MAC for authenticity).

Chunk ids are BLAKE3 of the plaintext (hex, 64 chars) in a plain repository, and keyed BLAKE3
under a secret id key in an encrypted one, so ids reveal nothing about content. Keys: a random
data key and id key (32 bytes each) are wrapped with a key derived from the passphrase by scrypt
(memory-hard); only the wrapped form is stored, in the repository config. A config holds up to a few
such wraps ("key slots": the same keys under different passphrases, e.g. a recovery passphrase), and a
tag (keyed BLAKE3 under a key derived from the master keys) that authenticates every other config field
(repository_config.py).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import os
import struct
import traceback

from ansible_collections.hyperv.backup.plugins.module_utils.errors import RepositoryError

try:
    import blake3
    HAS_BLAKE3 = True
    BLAKE3_IMPORT_ERROR = None
except ImportError:
    HAS_BLAKE3 = False
    BLAKE3_IMPORT_ERROR = traceback.format_exc()

try:
    import xxhash
    HAS_XXHASH = True
    XXHASH_IMPORT_ERROR = None
except ImportError:
    HAS_XXHASH = False
    XXHASH_IMPORT_ERROR = traceback.format_exc()

try:
    import zstandard
    HAS_ZSTANDARD = True
    ZSTANDARD_IMPORT_ERROR = None
except ImportError:
    HAS_ZSTANDARD = False
    ZSTANDARD_IMPORT_ERROR = traceback.format_exc()

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()


# The envelope of each readable repository format: magic, and the checksum of a plain object (digest size).
# Formats 1 to 3 were never released ("HVB1", and "HVB3" with format 3's config): refused by the config check.
ENVELOPE_MAGIC = {4: b"HVB3", 5: b"HVB5"}
NEWEST_ENVELOPE = 5
HEADER = struct.Struct(">4sBB")
NONCE_SIZE = 12
SALT_SIZE = 16                      # per-object HKDF salt: 128 random bits, so object keys never repeat in practice
TAG_SIZE = 16
FLAG_ZSTD = 0x01
FLAG_ENCRYPTED = 0x02
FLAG_CHECKSUM = 0x04
FLAG_PADDED = 0x08
KNOWN_FLAGS = FLAG_ZSTD | FLAG_ENCRYPTED | FLAG_CHECKSUM | FLAG_PADDED
CHECKSUM_SIZE = {4: 32, 5: 16}      # BLAKE3-256, XXH3-128
PADDED_LENGTH = struct.Struct(">Q")     # true body length, first inside the ciphertext of a padded object
OBJECT_KEY_INFO = b"hyperv.backup object v3"
PADDING_MODES = ("none", "padme")

# Object kinds, recorded in the header so an object of one kind is never read as another.
KIND_CHUNK = 1
KIND_MANIFEST = 2
KIND_BACKUP = 3
KIND_CATALOG = 4
KIND_STATUS = 5

# scrypt cost of new key slots: N=2**17, r=8 needs 128 * r * N = 128 MiB and 0.3-0.6 s per attempt (docs/repository.md);
# stored per slot, so existing slots keep theirs and a passphrase change upgrades its slot to these.
DEFAULT_SCRYPT = {"n": 2 ** 17, "r": 8, "p": 1}
# Bounds on parameters read from a config: anyone who can write the config could otherwise ask for 2**40 bytes.
SCRYPT_LIMITS = {"n": (2 ** 10, 2 ** 22), "r": (1, 32), "p": (1, 16)}
KEY_SLOT_AAD = b"hyperv.backup key slot v2"
CONFIG_TAG_CONTEXT = "hyperv.backup 2026-12 repository config authentication v2"
CIPHER = "AES-256-GCM"


def require_libraries(encrypted=False):
    """Raise RepositoryError naming the missing Python library and how to install it."""
    missing = []
    if not HAS_BLAKE3:
        missing.append("blake3")
    if not HAS_XXHASH:
        missing.append("xxhash")
    if not HAS_ZSTANDARD:
        missing.append("zstandard")
    if encrypted and not HAS_CRYPTOGRAPHY:
        missing.append("cryptography")
    if missing:
        raise RepositoryError("The backup repository needs the Python libraries: %s." % ", ".join(missing),
                              hint="Install them on the host that runs the module: pip install %s" % " ".join(missing))


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def _unb64(text):
    return base64.b64decode(text.encode("ascii"))


class RepositoryKeys:
    """The secrets of an encrypted repository (None for a plain one), and the operations needing them."""

    def __init__(self, data_key=None, id_key=None):
        self.data_key = data_key
        self.id_key = id_key
        self.slot_index = None          # which key slot opened them (set by unlock)
        self.slot_label = None
        # "none" or "padme": set from the config by Repository (padding is a repository option, authenticated there).
        self.padding = "none"
        # The repository's format version, which picks the envelope (ENVELOPE_MAGIC): set from the config likewise.
        self.format_version = NEWEST_ENVELOPE

    @property
    def encrypted(self):
        return bool(self.data_key)

    @classmethod
    def create(cls, passphrase, scrypt_params=None, label="passphrase"):
        """New random keys, and the config section that stores them wrapped under ``passphrase`` (one key slot)."""
        require_libraries(encrypted=True)
        keys = cls(os.urandom(32), os.urandom(32))
        return keys, {"cipher": CIPHER, "key_slots": [keys.new_slot(passphrase, label, scrypt_params)]}

    def new_slot(self, passphrase, label, scrypt_params=None):
        """A key slot: these keys wrapped under ``passphrase`` (scrypt with a fresh salt, AES-256-GCM)."""
        params = dict(scrypt_params or DEFAULT_SCRYPT)
        salt = os.urandom(16)
        nonce = os.urandom(NONCE_SIZE)
        wrapped = AESGCM(_derive(passphrase, salt, params)).encrypt(nonce, self.data_key + self.id_key, KEY_SLOT_AAD)
        return {"label": label, "kdf": {"name": "scrypt", "n": int(params["n"]), "r": int(params["r"]), "p": int(params["p"]),
                                        "salt": _b64(salt)},
                "wrapped_keys": _b64(wrapped), "wrap_nonce": _b64(nonce)}

    @classmethod
    def open_slot(cls, slot, passphrase):
        """The keys ``slot`` wraps, or None if ``passphrase`` is not the slot's; the slot's shape is checked first."""
        _check_slot(slot)
        kdf = slot["kdf"]
        kek = _derive(passphrase, _unb64(kdf["salt"]), kdf)
        try:
            plain = AESGCM(kek).decrypt(_unb64(slot["wrap_nonce"]), _unb64(slot["wrapped_keys"]), KEY_SLOT_AAD)
        except InvalidTag:
            return None
        if len(plain) != 64:
            return None
        return cls(plain[:32], plain[32:])

    @classmethod
    def unlock(cls, section, passphrase, location):
        """Unwrap the keys of an encrypted repository with the first key slot ``passphrase`` opens.

        The keys remember which slot (``slot_index``, ``slot_label``). A wrong passphrase raises a clear
        RepositoryError (``reason`` "wrong_passphrase"); the caller then checks the config's tag (``config_tag``).
        """
        if section is None:
            return cls()
        if not passphrase:
            raise RepositoryError("Repository %s is encrypted and no passphrase was given." % location,
                                  hint="Pass the repository passphrase (repository_passphrase).", location=location)
        require_libraries(encrypted=True)
        slots = section.get("key_slots") if isinstance(section, dict) else None
        if not isinstance(slots, list) or not slots:
            raise RepositoryError("The repository config at %s has no key slots (damaged or tampered)." % location,
                                  hint="Restore 'config' from a key export (hyperv_backup_repository state: key_imported).",
                                  location=location)
        for index, slot in enumerate(slots):
            try:
                keys = cls.open_slot(slot, passphrase)
            except (KeyError, TypeError, ValueError) as err:
                raise RepositoryError("Key slot %d of the repository config at %s is damaged: %s." % (index, location, err),
                                      hint="Restore 'config' from a key export (hyperv_backup_repository state: key_imported).",
                                      location=location)
            if keys is not None:
                keys.slot_index, keys.slot_label = index, slot.get("label")
                return keys
        raise RepositoryError("Wrong passphrase for repository %s." % location,
                              hint="Use the passphrase the repository was created with (or set by a passphrase change), or the "
                                   "passphrase of another key slot; it cannot be recovered.", location=location,
                              reason="wrong_passphrase")

    def config_tag(self, canonical):
        """Authentication tag of the config's canonical bytes: keyed BLAKE3 under a key derived from both master keys.

        A key of its own (derive_key mode, fixed context) so the tag never reveals anything about the data or id key."""
        tag_key = blake3.blake3(self.data_key + self.id_key, derive_key_context=CONFIG_TAG_CONTEXT).digest()
        return blake3.blake3(canonical, key=tag_key).hexdigest()

    def chunk_id(self, data):
        """Content address of a chunk: hex BLAKE3, keyed with the id key when encrypted."""
        if self.id_key:
            return blake3.blake3(data, key=self.id_key).hexdigest()
        return blake3.blake3(data).hexdigest()

    def seal(self, kind, name, data, compressor=None):
        """Wrap ``data`` for storage under ``name``: compress (kept only if smaller), then encrypt."""
        return b"".join(self.seal_parts(kind, name, data, compressor))

    def seal_parts(self, kind, name, data, compressor=None):
        """``seal`` as a list of buffers to write in order (saves copying a 4 MiB body behind its header)."""
        flags = 0
        body = data
        if compressor is not None and worth_compressing(data, compressor):
            packed = compressor.compress(data)
            if len(packed) < len(data):
                body, flags = packed, FLAG_ZSTD
        if not self.encrypted:
            header = HEADER.pack(ENVELOPE_MAGIC[self.format_version], kind, flags | FLAG_CHECKSUM)
            return [header, body, _checksum(self.format_version, header, name, body)]
        flags |= FLAG_ENCRYPTED
        if self.padding == "padme":
            flags |= FLAG_PADDED
            # Pad so that the whole stored object, not only its body, has a Padme length: that is what storage shows.
            unpadded = HEADER.size + SALT_SIZE + NONCE_SIZE + PADDED_LENGTH.size + len(body) + TAG_SIZE
            body = b"".join((PADDED_LENGTH.pack(len(body)), body, bytes(padme(unpadded) - unpadded)))
        header = HEADER.pack(ENVELOPE_MAGIC[self.format_version], kind, flags)
        salt = os.urandom(SALT_SIZE)
        # A random nonce as well, although the key is already unique: a repeated salt (broken RNG) then still needs
        # a repeated nonce before anything leaks.
        nonce = os.urandom(NONCE_SIZE)
        return [header, salt, nonce, self._object_cipher(kind, salt).encrypt(nonce, body, header + salt + name.encode("utf-8"))]

    def _object_cipher(self, kind, salt):
        """AES-256-GCM under the object's own key: HKDF-SHA256(data key, salt, info = label | kind)."""
        info = OBJECT_KEY_INFO + struct.pack(">B", kind)
        return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(self.data_key))

    def unseal(self, kind, name, blob):
        """Return the plaintext of ``blob`` stored under ``name``; raise ValueError if it is damaged."""
        if len(blob) < HEADER.size:
            raise ValueError("object is truncated (%d bytes)" % len(blob))
        magic, got_kind, flags = HEADER.unpack_from(blob)
        if magic != ENVELOPE_MAGIC[self.format_version]:
            if magic in ENVELOPE_MAGIC.values():
                # a format-4 object in a format-5 repository (or the reverse) was put there: it was never written so
                raise ValueError("object has the envelope of another repository format (%r in a format %d repository)"
                                 % (magic, self.format_version))
            raise ValueError("not a repository object (bad magic)")
        if got_kind != kind:
            raise ValueError("object kind %d where %d was expected" % (got_kind, kind))
        if flags & ~KNOWN_FLAGS:
            raise ValueError("unknown envelope flags 0x%02x (corrupt, or written by a newer version)" % flags)
        body = memoryview(blob)[HEADER.size:]
        if flags & FLAG_CHECKSUM:
            size = CHECKSUM_SIZE[self.format_version]
            if flags & FLAG_ENCRYPTED or len(body) < size:
                raise ValueError("object is damaged (checksum flag on an encrypted or truncated object)")
            stored = bytes(body[-size:])
            body = body[:-size]
            if _checksum(self.format_version, blob[:HEADER.size], name, body) != stored:
                raise ValueError("checksum mismatch (corrupt, or stored under another name)")
        if flags & FLAG_ENCRYPTED:
            if not self.encrypted:
                raise ValueError("object is encrypted but the repository has no key")
            if len(body) < SALT_SIZE + NONCE_SIZE + TAG_SIZE:
                raise ValueError("object is truncated (%d bytes)" % len(blob))
            salt = bytes(body[:SALT_SIZE])
            nonce = bytes(body[SALT_SIZE:SALT_SIZE + NONCE_SIZE])
            try:
                body = self._object_cipher(kind, salt).decrypt(nonce, bytes(body[SALT_SIZE + NONCE_SIZE:]),
                                                               bytes(blob[:HEADER.size]) + salt + name.encode("utf-8"))
            except InvalidTag:
                raise ValueError("authentication failed (corrupt or tampered)")
            if flags & FLAG_PADDED:
                body = _unpad(body)
        elif flags & FLAG_PADDED:
            raise ValueError("padding flag on a plain object (tampered)")
        elif self.encrypted:
            raise ValueError("object is not encrypted in an encrypted repository (tampered)")
        elif not flags & FLAG_CHECKSUM:
            raise ValueError("plain object without its checksum (tampered)")
        if flags & FLAG_ZSTD:
            try:
                return zstandard.ZstdDecompressor().decompress(body)
            except zstandard.ZstdError as err:
                raise ValueError("zstd decompression failed: %s" % err)
        return bytes(body)


def padme(length):
    """``length`` rounded up by Padme: at most about 12 % more (11.1 % at worst, less for large lengths), and only
    O(log log length) bits of the length remain visible.

    Algorithm 1 of Nikitin, Barman, Lueks, Underwood, Hubaux, Ford, "Reducing Metadata Leakage from Encrypted Files
    and Communication with PURBs", PoPETs 2019 (4), https://doi.org/10.2478/popets-2019-0056 (also
    https://lbarman.ch/blog/padme/; restic pull request 5410 pads pack files with it): with E = floor(log2 L) and
    S = floor(log2 E) + 1, clear the low E - S bits of L, rounding up.
    """
    if length < 2:
        return length
    exponent = length.bit_length() - 1
    mask = (1 << (exponent - exponent.bit_length())) - 1
    return (length + mask) & ~mask


def _unpad(inner):
    """The body inside a padded plaintext (``length | body | zeros``); authenticated already, so a bad length is damage."""
    if len(inner) < PADDED_LENGTH.size:
        raise ValueError("padded object is truncated")
    (length,) = PADDED_LENGTH.unpack_from(inner)
    if length > len(inner) - PADDED_LENGTH.size:
        raise ValueError("padded object's length field is damaged")
    return memoryview(inner)[PADDED_LENGTH.size:PADDED_LENGTH.size + length]


def _checksum(format_version, header, name, body):
    """Checksum over header, name and body of a plain object (binds it to its name, like the cipher's AAD): XXH3-128
    in format 5, BLAKE3 in format 4."""
    hasher = xxhash.xxh3_128(header) if format_version >= 5 else blake3.blake3(header)
    hasher.update(name.encode("utf-8"))
    hasher.update(body)
    return hasher.digest()


def _check_slot(slot):
    """ValueError unless ``slot`` is a key slot this code can open within the memory and time limits."""
    if not isinstance(slot, dict) or not isinstance(slot.get("kdf"), dict):
        raise ValueError("not a key slot")
    kdf = slot["kdf"]
    if kdf.get("name") != "scrypt":
        raise ValueError("unknown key derivation %r" % (kdf.get("name"),))
    for name, (low, high) in SCRYPT_LIMITS.items():
        value = kdf.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError("scrypt parameter %s=%r is outside %d..%d" % (name, value, low, high))
    if kdf["n"] & (kdf["n"] - 1):
        raise ValueError("scrypt parameter n=%d is not a power of two" % kdf["n"])
    for name in ("wrapped_keys", "wrap_nonce"):
        if not isinstance(slot.get(name), str):
            raise ValueError("%s is missing" % name)
    if not isinstance(kdf.get("salt"), str) or len(_unb64(kdf["salt"])) < 16 or len(_unb64(slot["wrap_nonce"])) != NONCE_SIZE:
        raise ValueError("salt or nonce has the wrong size")


def _derive(passphrase, salt, params):
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    return Scrypt(salt=salt, length=32, n=int(params["n"]), r=int(params["r"]), p=int(params["p"])).derive(passphrase)


# A big object is compressed only when one of three 4 KiB samples (start, middle, end) shrinks by at least 3 %
# with the same compressor: random or already compressed data (30 % of the benchmark image, most encrypted guest
# volumes) then costs three small calls instead of a full zstd pass that gains nothing. Borg's "auto" compression
# decides the same way (with lz4 as the probe). A chunk whose samples all miss a compressible part is stored
# uncompressed: a few percent of space, never a wrong byte.
PROBE_ABOVE = 64 * 1024
PROBE_BYTES = 4096
PROBE_GAIN = 0.97


def worth_compressing(data, compressor):
    """False when ``data`` looks incompressible from three samples (only for objects above PROBE_ABOVE bytes)."""
    size = len(data)
    if size <= PROBE_ABOVE:
        return True
    view = memoryview(data)
    for start in (0, size // 2, size - PROBE_BYTES):
        if len(compressor.compress(view[start:start + PROBE_BYTES])) < PROBE_BYTES * PROBE_GAIN:
            return True
    return False


def new_compressor(level):
    """A zstd compressor (one per thread: ZstdCompressor objects are not thread-safe)."""
    return zstandard.ZstdCompressor(level=level)
