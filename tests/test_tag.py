from __future__ import annotations

from slurm_flex.tag import HookTag, format_tag, parse_tag


def test_roundtrip() -> None:
    tag = HookTag(
        version=1,
        power_w=350.0,
        basis="req",
        begin=1795250000,
        grace=1795250120,
        deadline=1795300000,
        slack=3600,
        flex="deadline",
        why="",
    )
    text = format_tag(tag)
    assert text == (
        "slurmflex:v1;power_w=350;basis=req;begin=1795250000;grace=1795250120;deadline=1795300000;"
        "slack=3600;flex=deadline;why="
    )
    assert parse_tag(text) == tag


def test_found_inside_a_site_admin_comment() -> None:
    tag = parse_tag("project=abc slurmflex:v1;power_w=90;begin=0;grace=0 reviewed")
    assert tag is not None and tag.power_w == 90 and tag.begin is None and tag.grace is None


def test_newer_versions_and_unknown_keys_are_kept() -> None:
    tag = parse_tag("slurmflex:v2;power_w=10;measured_w=12;flex=keyword")
    assert tag is not None and tag.version == 2 and tag.flex == "keyword"
    assert tag.extra == {"measured_w": "12"}


def test_absent_or_garbled() -> None:
    assert parse_tag("") is None
    assert parse_tag("something else") is None
    garbled = parse_tag("slurmflex:v1;power_w=abc;begin=x")
    assert garbled is not None and garbled.power_w is None and garbled.begin is None
    assert parse_tag("slurmflex:v1;power_w=-5").power_w is None  # type: ignore[union-attr]


def test_opt_out() -> None:
    tag = parse_tag("slurmflex:v1;power_w=5;flex=no;why=interactive")
    assert tag is not None and tag.opted_out and tag.why == "interactive"
    assert not parse_tag("slurmflex:v1;flex=policy;slack=3600").opted_out  # type: ignore[union-attr]
    assert not parse_tag("slurmflex:v1;flex=no;why=none").opted_out  # type: ignore[union-attr]
