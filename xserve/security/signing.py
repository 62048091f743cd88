"""Ed25519 signing keys: the pair that signs audit checkpoints, and its fingerprint.

``xserve keys signing-key --out PREFIX`` writes the private key to ``PREFIX`` (PKCS#8
PEM, unencrypted: the server reads it unattended) and the public key to ``PREFIX.pub``
(SubjectPublicKeyInfo PEM), both 0600 in a 0700 folder if xserve makes it. The public
key is what an auditor is given; the private one stays with the server and nowhere else.
"""

from __future__ import annotations

import hashlib
import logging
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from xserve.security.files import create_private

__all__ = [
    "SigningKeyError",
    "key_id",
    "load_private_key",
    "load_public_key",
    "signature_holds",
    "write_key_pair",
]

log = logging.getLogger(__name__)

MAX_KEY_FILE = 64 * 1024
"""A PEM key is a few hundred bytes: anything far larger is not one."""


class SigningKeyError(ValueError):
    """A key file is missing, unreadable or not an Ed25519 key of the expected kind."""


def key_id(public: Ed25519PublicKey) -> str:
    """The key's fingerprint: ``ed25519:`` and the first 32 hex digits of the SHA-256 of
    its raw 32 bytes. Checkpoints name the key that signed them by it."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def write_key_pair(prefix: Path) -> tuple[Path, Path, str]:
    """A new key pair at ``prefix`` (private) and ``prefix.pub``; neither may exist yet.
    Returns both paths and the key id."""
    public_path = prefix.with_name(prefix.name + ".pub")
    for path in (prefix, public_path):
        if path.exists():
            raise SigningKeyError(f"{path} exists: a signing key is never overwritten")
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    try:
        create_private(
            prefix,
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        create_private(
            public_path,
            public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
    except FileExistsError as exc:
        raise SigningKeyError(f"{exc.filename} exists: a key is never overwritten") from None
    return prefix, public_path, key_id(public)


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_KEY_FILE:
            raise SigningKeyError(f"{path}: too large to be an {what}")
        return path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path``; warns if others may read it."""
    data = _read(path, "Ed25519 private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 private key")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: the audit signing key is readable by others; chmod 600 it", path)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file ``path``."""
    data = _read(path, "Ed25519 public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path}: not an Ed25519 public key")
    return key


def signature_holds(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True
