"""Beckn v2 on the Digital Energy Grid: the cluster's flexibility offered to grid operators.

One module per concern: ``signing`` (BECKN-006 / NFH-007 HTTP signatures), ``trust`` (whose keys
are believed), ``replay`` (replay cache and idempotency), ``schemas`` (offline validation
against the vendored core and DEG schemas), ``flexibility`` (what the live queue can shed or
absorb per half-hour), ``contract`` (DEG demand-flex contract shapes), ``orders`` (contracts
kept in the state dir), ``outbox`` (durable callbacks), ``server`` (the ASGI endpoint) and
``agent`` (a grid operator playing the utility, for demos and tests).
"""
