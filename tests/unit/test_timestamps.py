"""Kubernetes timestamps: RFC 3339 in UTC with whole seconds and "Z", and back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from kubemaas_operator.timestamps import format_time, parse_time


def test_format_and_parse_round_trip() -> None:
    moment = datetime(2026, 11, 30, 19, 40, 5, 123456, tzinfo=UTC)
    assert format_time(moment) == "2026-11-30T19:40:05Z"
    assert format_time(moment.astimezone(timezone(timedelta(hours=2)))) == "2026-11-30T19:40:05Z"
    assert parse_time("2026-11-30T19:40:05Z") == moment.replace(microsecond=0)


def test_missing_or_malformed_times_are_none() -> None:
    for bad in (None, "", "yesterday", 5, "2026-13-01T00:00:00Z"):
        assert parse_time(bad) is None
