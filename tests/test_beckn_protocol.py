"""Beckn plumbing without a server: schema validation (the DEG devkit examples validate against
the vendored schemas), trust (static file, registry with a cache that honours valid_until),
replay cache and idempotency."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from slurm_flex.beckn.errors import KeyFileError, ReplayError, SchemaError, SignatureError
from slurm_flex.beckn.replay import ReplayCache
from slurm_flex.beckn.schemas import validate
from slurm_flex.beckn.signing import generate_seed, private_key_from_b64, public_raw
from slurm_flex.beckn.trust import RegistryTrust, StaticTrust

REPO = Path(__file__).resolve().parent.parent
DEVKIT = REPO.parent / "shared" / "specs" / "beckn" / "deg-2026" / "devkits" / "demand-flex"


def devkit_examples() -> list[Path]:
    return sorted(DEVKIT.glob("*/examples/*.json")) + sorted(DEVKIT.glob("*/responses/*/*.json"))


def without_comments(node: Any) -> Any:
    """The paged devkit examples annotate themselves with ``_comment_*`` keys, which their own
    schema (additionalProperties: false) does not allow; they are notes, not data."""
    if isinstance(node, dict):
        return {k: without_comments(v) for k, v in node.items() if not k.startswith("_comment")}
    if isinstance(node, list):
        return [without_comments(v) for v in node]
    return node


@pytest.mark.shared
def test_devkit_examples_validate() -> None:
    examples = devkit_examples()
    if not examples:
        pytest.skip("../shared is not present")
    assert len(examples) >= 15
    for path in examples:
        doc = without_comments(json.loads(path.read_text()))
        validate(doc["context"]["action"], doc)


def _example(name: str) -> dict[str, Any]:
    path = DEVKIT / "uc1-bdr-w-baselining" / "examples" / name
    if not path.exists():
        pytest.skip("../shared is not present")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.mark.shared
@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d["message"].pop("contract"), "$.message"),
        (lambda d: d["context"].__setitem__("action", "init"), "$.context.action"),
        (lambda d: d["message"]["contract"].__setitem__("commitments", []), "$.message.contract.commitments"),
        (
            lambda d: d["message"]["contract"]["commitments"][0]["resources"][0]["resourceAttributes"].pop(
                "intervalPeriod"
            ),
            "resourceAttributes",
        ),
        (
            lambda d: d["message"]["contract"]["contractAttributes"].pop("roles"),
            "contractAttributes",
        ),
    ],
)
def test_schema_refusals(mutate: Any, where: str) -> None:
    doc = _example("confirm-request.json")
    validate("confirm", doc)
    bad = copy.deepcopy(doc)
    mutate(bad)
    with pytest.raises(SchemaError) as err:
        validate("confirm", bad)
    assert where in str(err.value)


def test_unknown_action() -> None:
    with pytest.raises(SchemaError) as err:
        validate("teleport", {})
    assert err.value.status == 404


def _trust_file(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(entries))
    return path


def _pub() -> str:
    return base64.b64encode(
        public_raw(private_key_from_b64(base64.b64encode(generate_seed()).decode()).public_key())
    ).decode()


def test_static_trust(tmp_path: Path) -> None:
    pub = _pub()
    trust = StaticTrust.from_file(
        _trust_file(
            tmp_path,
            [
                {"subscriber_id": "grid.example", "key_id": "k1", "public_key": pub, "uri": "http://127.0.0.1:1/b"},
                {"subscriber_id": "old.example", "key_id": "k1", "public_key": pub, "uri": "", "valid_until": 1000},
            ],
        )
    )
    entry = asyncio.run(trust.lookup("grid.example", "k1"))
    assert base64.b64encode(public_raw(entry.public_key)).decode() == pub
    assert asyncio.run(trust.uri_of("grid.example")) == "http://127.0.0.1:1/b"
    for sub, key in (("grid.example", "k2"), ("nobody", "k1"), ("old.example", "k1")):
        with pytest.raises(SignatureError) as err:
            asyncio.run(trust.lookup(sub, key))
        assert err.value.code == "UNTRUSTED_KEY"
    with pytest.raises(KeyFileError):
        StaticTrust.from_file(_trust_file(tmp_path, [{"subscriber_id": "x", "key_id": "k", "public_key": "AAAA"}]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def test_registry_cache_honours_valid_until(tmp_path: Path) -> None:
    pub = _pub()
    data = tmp_path / "subs.json"
    valid_until = time.time() + 3600
    data.write_text(
        json.dumps(
            [
                {
                    "subscriber_id": "grid.example",
                    "unique_key_id": "k1",
                    "signing_public_key": pub,
                    "subscriber_url": "http://127.0.0.1:9/beckn",
                    "valid_until": valid_until,
                    "status": "SUBSCRIBED",
                }
            ]
        )
    )
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.beckn_peers", "registry", str(port), str(data)], cwd=REPO)
    now = [time.time()]
    try:
        wait_port(port)

        async def scenario() -> None:
            trust = RegistryTrust(f"http://127.0.0.1:{port}", cache_seconds=60, clock=lambda: now[0])
            await trust.lookup("grid.example", "k1")
            await trust.lookup("grid.example", "k1")
            assert trust.lookups == 1  # second answer from the cache
            assert await trust.uri_of("grid.example") == "http://127.0.0.1:9/beckn"
            now[0] += 61  # cache time over: asked again
            await trust.lookup("grid.example", "k1")
            assert trust.lookups == 2
            with pytest.raises(SignatureError):
                await trust.lookup("grid.example", "k9")
            # registry down: the cached key is used until its valid_until, never after
            proc.kill()
            proc.wait()
            now[0] += 61
            await trust.lookup("grid.example", "k1")
            now[0] = valid_until + 1
            with pytest.raises(SignatureError):
                await trust.lookup("grid.example", "k1")

        asyncio.run(scenario())
    finally:
        proc.kill()
        proc.wait()


def test_replay_cache(tmp_path: Path) -> None:
    cache = ReplayCache(tmp_path / "beckn.sqlite3", retain_seconds=100)
    assert cache.claim("bap", "m1", "d1", "confirm", expires=1300, now=1000) is None
    cache.answer("bap", "m1", 200, b"ack")
    again = cache.claim("bap", "m1", "d1", "confirm", expires=1300, now=1001)
    assert again is not None and again.response == b"ack" and again.status == 200
    with pytest.raises(ReplayError):
        cache.claim("bap", "m1", "d2", "confirm", expires=1300, now=1001)
    assert cache.claim("other", "m1", "d2", "confirm", expires=1300, now=1001) is None
    # survives a restart
    reopened = ReplayCache(tmp_path / "beckn.sqlite3", retain_seconds=100)
    with pytest.raises(ReplayError):
        reopened.claim("bap", "m1", "d2", "confirm", expires=1300, now=1002)
    # kept while its signature could still be replayed, dropped after retention
    assert reopened.prune(1250) == 0
    assert reopened.prune(1400) == 2
    assert reopened.claim("bap", "m1", "d2", "confirm", expires=1600, now=1401) is None
