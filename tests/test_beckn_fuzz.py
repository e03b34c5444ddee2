"""Hypothesis fuzzing of the endpoint (in process, through Starlette's test client): whatever
arrives (random bytes, random JSON, mangled signature headers, valid signatures over junk) the
answer is a signed ACK/NACK with a 4xx status for bad input, never a 5xx, and nothing is stored."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from slurm_flex.beckn.keys import read_private_key, write_keypair
from slurm_flex.beckn.outbox import Outbox
from slurm_flex.beckn.replay import ReplayCache
from slurm_flex.beckn.server import Endpoint, build_app
from slurm_flex.beckn.signing import Signer, parse_header, verify
from slurm_flex.beckn.store import BecknStore
from slurm_flex.beckn.trust import StaticTrust
from slurm_flex.planner.policy import Policy


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Signer, Signer, Path]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    write_keypair(tmp / "c")
    grid_pub = write_keypair(tmp / "g")
    (tmp / "trust.json").write_text(
        json.dumps([{"subscriber_id": "g", "key_id": "k1", "public_key": grid_pub, "uri": "http://127.0.0.1:9"}])
    )
    me = Signer("c", "k1", read_private_key(tmp / "c" / "signing.key"))
    grid = Signer("g", "k1", read_private_key(tmp / "g" / "signing.key"))
    trust = StaticTrust.from_file(tmp / "trust.json")
    store = BecknStore(tmp / "state")
    ep = Endpoint(
        me,
        trust,
        ReplayCache(tmp / "state" / "replay.sqlite3"),
        store,
        tmp / "state",
        Policy(),
        "http://127.0.0.1:1",
        "n",
        5,
        20000,
        300,
        60,
        60,
        0.2,
        "GBP",
        600,
        8,
        600.0,
    )
    with TestClient(build_app(ep, Outbox(store, me, trust, 300))) as tc:
        yield tc, me, grid, tmp


ACTIONS = st.sampled_from(
    ["select", "init", "confirm", "status", "update", "cancel", "discover", "search", "on_status", "nope", "a/b"]
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def _check(resp: object, me: Signer, request_sig: str | None) -> None:
    assert resp.status_code < 500, resp.text  # type: ignore[attr-defined]
    body = resp.json()["message"]  # type: ignore[attr-defined]
    assert body["status"] in ("ACK", "NACK")
    header = parse_header(resp.headers["signature"])  # type: ignore[attr-defined]
    verify(
        header,
        me.key.public_key(),
        resp.content,
        time.time(),
        request_signature=request_sig if header.four_lines else None,
    )  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(action=ACTIONS, raw=st.binary(max_size=300), auth=st.text(max_size=200))
def test_random_bytes_and_headers(
    client: tuple[TestClient, Signer, Signer, Path], action: str, raw: bytes, auth: str
) -> None:
    tc, me, _grid, _tmp = client
    try:
        resp = tc.post(f"/{action}", content=raw, headers={"Authorization": auth})
    except UnicodeEncodeError:
        return  # not a header an HTTP client can send
    assert resp.status_code in (400, 401, 404, 413)
    _check(resp, me, None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    action=ACTIONS,
    doc=JSONISH,
    ctx=st.dictionaries(
        st.sampled_from(["action", "bapId", "bapUri", "messageId", "version", "transactionId"]), st.text(max_size=12)
    ),
)
def test_validly_signed_junk(
    client: tuple[TestClient, Signer, Signer, Path], action: str, doc: object, ctx: dict[str, str]
) -> None:
    tc, me, grid, tmp = client
    body = json.dumps({"context": ctx, "message": doc} if ctx else doc).encode()
    now = int(time.time())
    header = grid.sign(body, now, now + 60)
    resp = tc.post(f"/{action}", content=body, headers={"Authorization": header.value()})
    assert resp.status_code in (400, 401, 403, 404, 409, 413)
    _check(resp, me, header.signature)
    assert BecknStore(tmp / "state").outbox_rows() == []  # no callback was queued by junk
