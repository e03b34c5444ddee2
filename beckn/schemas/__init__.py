"""Offline validation of Beckn v2 messages against the vendored core and DEG schemas.

A request body is checked against its action's request schema from the core OpenAPI document,
then every JSON-LD typed object inside it whose ``@type`` names a vendored DEG schema
(``DemandFlexNeed``, ``DemandFlexBuyOffer``, ``TimeSeries``, ``DEGContract``,
``DemandFlexPerformance``, ...) against that schema. No reference is ever fetched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT202012

from slurm_flex.beckn.errors import SchemaError

CORE_URI = "urn:slurm-flex:beckn-core-v2"
NFH = "https://schema.nfh.global/"
# JSON-LD @type -> (vendored file stem, schema name in it)
DEG_TYPES = {
    "DemandFlexNeed": ("DemandFlexNeed-v2.0", "DemandFlexNeed"),
    "DemandFlexBuyOffer": ("DemandFlexBuyOffer-v2.0", "DemandFlexBuyOffer"),
    "DemandFlexPerformance": ("DemandFlexPerformance-v2.0", "DemandFlexPerformance"),
    "DEGContract": ("DEGContract-v2.0", "DEGContract"),
    "TimeSeries": ("BecknTimeSeries-v1.0", "BecknTimeSeries"),
    "BecknTimeSeries": ("BecknTimeSeries-v1.0", "BecknTimeSeries"),
    "EnergyResource": ("EnergyResource-v2.0", "EnergyResource"),
}


def _load(name: str) -> Any:
    return _cached_load(name)


@cache
def _cached_load(name: str) -> Any:
    return json.loads((resources.files("slurm_flex.beckn") / "schemas" / name).read_text(encoding="utf-8"))


def _deg_stems() -> list[str]:
    folder = resources.files("slurm_flex.beckn") / "schemas" / "deg"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def _retrieve(uri: str) -> Resource[Any]:
    """Only the stand-ins (standins.json) resolve beyond the vendored files: validation must
    never touch the network."""
    standins = _load("standins.json")
    if uri in standins:
        return _SPEC.create_resource(standins[uri])
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # attrs class


_SPEC = DRAFT202012


@cache
def _registry() -> Registry[Any]:
    pairs: list[tuple[str, Resource[Any]]] = [(CORE_URI, _SPEC.create_resource(_load("core-v2.json")))]
    for stem in _deg_stems():
        name, _, version = stem.rpartition("-")
        doc = _load(f"deg/{stem}.json")
        pairs.append((f"{NFH}{name}/{version}", _SPEC.create_resource(doc)))
    return Registry(retrieve=_retrieve).with_resources(pairs)  # type: ignore[call-arg]  # attrs class


def _pointer_escape(text: str) -> str:
    return text.replace("~", "~0").replace("/", "~1")


@cache
def _request_validator(action: str) -> Draft202012Validator:
    core = _load("core-v2.json")
    if f"/{action}" not in core["paths"]:
        raise SchemaError(f"unknown action {action!r}", code="UNKNOWN_ACTION", status=404)
    ref = f"{CORE_URI}#/paths/{_pointer_escape('/' + action)}/post/requestBody/content/application~1json/schema"
    return Draft202012Validator({"$ref": ref}, registry=_registry())


@cache
def _type_validator(type_name: str) -> Draft202012Validator:
    stem, schema = DEG_TYPES[type_name]
    name, _, version = stem.rpartition("-")
    return Draft202012Validator({"$ref": f"{NFH}{name}/{version}#/components/schemas/{schema}"}, registry=_registry())


def known_actions() -> frozenset[str]:
    return frozenset(p.lstrip("/") for p in _load("core-v2.json")["paths"])


def _typed(node: Any, path: str = "$") -> Iterator[tuple[str, str, dict[str, Any]]]:
    if isinstance(node, dict):
        t = node.get("@type")
        if isinstance(t, str) and t in DEG_TYPES:
            yield path, t, node
        for k, v in node.items():
            yield from _typed(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _typed(v, f"{path}[{i}]")


def _where(err: ValidationError, base: str = "$") -> str:
    return base + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)


def validate(action: str, doc: Any) -> None:
    """Raise :class:`SchemaError` naming the first problem's JSON path; otherwise return."""
    validator = _request_validator(action)
    err = next(iter(sorted(validator.iter_errors(doc), key=lambda e: len(list(e.absolute_path)))), None)
    if err is not None:
        raise SchemaError(f"{_where(err)}: {err.message[:300]}")
    for path, type_name, node in _typed(doc):
        # Schemas that do not declare the JSON-LD keywords (DEGContract) still arrive with them:
        # the core Attributes container carries @context/@type, the DEG schema the rest.
        stem, name = DEG_TYPES[type_name]
        declared = _load(f"deg/{stem}.json")["components"]["schemas"][name].get("properties", {})
        body = {k: v for k, v in node.items() if k in declared or k not in ("@context", "@type")}
        err = next(iter(_type_validator(type_name).iter_errors(body)), None)
        if err is not None:
            raise SchemaError(f"{_where(err, path)} ({type_name}): {err.message[:300]}")
