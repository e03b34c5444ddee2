"""``slurmflex beckn serve``: the endpoint as its own service (systemd/slurmflex-beckn.service),
beside the daemon. It shares only the state dir with the daemon: either may crash or restart
without the other losing what it must do (confirmed contracts, callbacks owed)."""

from __future__ import annotations

import threading
from typing import Any

import uvicorn

from slurm_flex.beckn.errors import KeyFileError
from slurm_flex.beckn.keys import read_private_key
from slurm_flex.beckn.outbox import Outbox
from slurm_flex.beckn.replay import ReplayCache
from slurm_flex.beckn.server import STALE_INTERVALS, Endpoint, build_app
from slurm_flex.beckn.signing import Signer
from slurm_flex.beckn.store import BecknStore
from slurm_flex.beckn.trust import RegistryTrust, StaticTrust, Trust
from slurm_flex.config import Config
from slurm_flex.ledger import events
from slurm_flex.ledger.site import open_site_ledger


def _ledger_append(config: Config) -> Any:
    """Appends to the site ledger (flock'd, so the daemon's writes and ours interleave safely)."""
    lock = threading.Lock()
    state: dict[str, Any] = {"ledger": None}

    def append(entries: list[events.Entry]) -> None:
        with lock:
            if state["ledger"] is None:
                state["ledger"] = open_site_ledger(config)
            if state["ledger"] is not None:
                try:
                    state["ledger"].append_many(entries)
                except Exception:
                    state["ledger"] = None  # reopened next time
                    raise

    return append if config.ledger.enabled else None


def build(config: Config) -> tuple[Endpoint, Outbox]:
    from slurm_flex.daemon.cycle import policy_from

    b = config.beckn
    if not b.subscriber_id or b.private_key_file is None:
        raise KeyFileError("[beckn] needs subscriber_id and private_key_file (make one with `slurmflex beckn keygen`)")
    trust: Trust
    if b.trust_file is not None:
        trust = StaticTrust.from_file(b.trust_file)
    elif b.registry_url:
        trust = RegistryTrust(b.registry_url, b.registry_cache_seconds)
    else:
        raise KeyFileError("[beckn] needs trust_file or registry_url: whose signatures to believe")
    signer = Signer(b.subscriber_id, b.key_id, read_private_key(b.private_key_file))
    state_dir = config.daemon.state_dir
    store = BecknStore(state_dir)
    append = _ledger_append(config)
    outbox = Outbox(store, signer, trust, b.signature_validity_seconds, ledger_append=append)
    endpoint = Endpoint(
        signer=signer,
        trust=trust,
        replay=ReplayCache(state_dir / "beckn" / "replay.sqlite3"),
        store=store,
        state_dir=state_dir,
        policy=policy_from(config),
        public_url=b.public_url or f"http://{b.listen}",
        network_id=b.network_id,
        skew_s=b.clock_skew_seconds,
        max_body=b.max_body_bytes,
        validity_s=b.signature_validity_seconds,
        offer_validity_s=b.offer_validity_seconds,
        callback_max_s=b.callback_max_seconds,
        price_per_kwh=b.price_per_kwh,
        currency=b.currency,
        resume_margin_s=b.resume_margin_seconds,
        horizon_slots=b.horizon_slots,
        input_max_age_s=STALE_INTERVALS * config.daemon.interval_seconds + 60,
        ledger_append=append,
    )
    return endpoint, outbox


def serve(config: Config) -> None:
    endpoint, outbox = build(config)
    host, _, port = config.beckn.listen.rpartition(":")
    uvicorn.run(build_app(endpoint, outbox), host=host, port=int(port), log_level="warning", access_log=False)
