"""Key files of a Beckn participant: ``signing.key`` (mode 0600, base64 of the 32-byte Ed25519
seed; the 64-byte seed || public key form is read too) and ``signing.pub`` (base64 of the
32-byte public key), the forms registries and beckn-onix configs take."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from slurm_flex.beckn.errors import KeyFileError
from slurm_flex.beckn.signing import generate_seed, private_key_from_b64, public_raw


def write_keypair(directory: Path) -> str:
    """Make a new key pair in ``directory``; refuses to overwrite. Returns the public key (base64)."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / "signing.key", directory / "signing.pub"
    seed = generate_seed()
    public = base64.b64encode(public_raw(Ed25519PrivateKey.from_private_bytes(seed).public_key())).decode()
    try:
        # O_EXCL: an existing key is never replaced (its public half may be registered already).
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{key_path} exists; not overwriting a signing key") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(seed).decode() + "\n")
    os.chmod(key_path, 0o600)  # whatever the umask
    pub_path.write_text(public + "\n")
    return public


def read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read signing key: {exc.strerror}") from exc
    try:
        return private_key_from_b64(text)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc
