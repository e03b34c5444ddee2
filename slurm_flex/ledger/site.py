"""The site's ledger as the config places it: ``<state_dir>/ledger/``, the key file and origin
from ``[ledger]``. The one place that turns config into ledger paths, so the daemon, the admin
commands and ``slurmflex audit`` agree."""

from __future__ import annotations

import socket
from pathlib import Path

from slurm_flex.config import Config
from slurm_flex.ledger.errors import KeyFileError
from slurm_flex.ledger.log import VKEY, Ledger
from slurm_flex.ledger.note import Signer

LEDGER_DIR = "ledger"
KEY_FILE = "ledger.key"


def ledger_dir(config: Config) -> Path:
    return config.daemon.state_dir / LEDGER_DIR


def key_file(config: Config) -> Path:
    return config.ledger.key_file or config.daemon.state_dir / KEY_FILE


def origin(config: Config) -> str:
    """The configured origin; unset: the existing key's name (so a renamed host keeps its log),
    else ``<fqdn>/slurm-flex``."""
    if config.ledger.origin:
        return config.ledger.origin
    try:
        return Signer.decode(key_file(config).read_text(encoding="ascii")).name
    except (OSError, UnicodeDecodeError, KeyFileError):
        return f"{socket.getfqdn()}/slurm-flex"


def vkey_file(config: Config) -> Path:
    return ledger_dir(config) / VKEY


def open_site_ledger(config: Config) -> Ledger | None:
    """The ledger to append to (None: ``[ledger] enabled = false``)."""
    if not config.ledger.enabled:
        return None
    return Ledger.open(ledger_dir(config), key_file(config), origin(config), config.ledger.records_per_file)
