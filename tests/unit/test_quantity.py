"""Quantities the CRD patterns admit but no Kubernetes object can hold (9e999999999, 1e1000000,
100Ei, inf) are refused with a QuantityError (a SpecError naming the field once parsed), never a
decimal.Overflow that escapes every reconcile that reads the spec; the ModelCache queue retries a
reconcile that raised, as its log says."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from decimal import Decimal

import pytest

from kubemaas_operator.api import parse_spec
from kubemaas_operator.api.fields import SpecError
from kubemaas_operator.modelcache import implicit
from kubemaas_operator.modelcache.api import parse_cache_spec
from kubemaas_operator.quantity import MAX_QUANTITY, QuantityError, parse_quantity, same_quantity
from kubemaas_operator.workqueue import WorkQueue

HUGE = ["9e999999999", "1e1000000", "-9e999999999", "1e400", "100Ei", "9223372036854775808"]


@pytest.mark.parametrize("text", HUGE)
def test_absurd_quantities_are_refused(text: str) -> None:
    with pytest.raises(QuantityError, match="too large"):
        parse_quantity(text)
    assert not same_quantity(text, text)


def test_limits_and_tiny_values() -> None:
    assert parse_quantity("9223372036854775807") == MAX_QUANTITY
    assert parse_quantity("7Ei") == 7 * 2**60
    assert parse_quantity("1e-999999999") == 0  # no underflow: the caller says "positive"
    for value in (float("inf"), float("nan")):
        with pytest.raises(QuantityError, match="finite"):
            parse_quantity(value)
    assert parse_quantity(1.5) == Decimal("1.5")


def _model(**runtime_resources: str) -> dict[str, object]:
    return {"model": {"uri": "https://example.com/m.onnx", "format": "onnx"},
            "runtime": {"image": "x", "resources": runtime_resources}}


def test_model_spec_names_the_field() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_model(memory="1e1000000"))
    assert err.value.path == "spec.runtime.resources.memory" and "too large" in err.value.message


AUTO = {"uri": "https://example.com/ov2.onnx", "format": "onnx",
        "autoCache": {"sizeLimit": "9e999999999",
                      "storage": {"type": "node", "node": {"nodes": ["cpu-0"]}}}}


def test_autocache_and_cache_spec() -> None:
    with pytest.raises(SpecError, match="sizeLimit"):
        parse_spec({"model": AUTO, "runtime": {"image": "x"}})
    # a ModelCache's reconcile reads every model's spec: a bad one is skipped, no exception
    assert implicit.parse_asking({"model": AUTO}) is None
    assert not implicit.asks_for({"model": AUTO}, {"spec": {}})
    for storage in ({"type": "node", "node": {"nodes": ["a"], "budget": "1e400"}},
                    {"type": "node", "node": {"nodes": ["a"]}}):
        spec = {"source": {"uri": "https://example.com/m.onnx"}, "storage": storage,
                "sizeLimit": "1e400" if "budget" not in storage["node"] else "1Gi"}
        with pytest.raises(SpecError, match="too large"):
            parse_cache_spec(spec)


def test_a_queue_with_retry_runs_a_failed_key_again() -> None:
    runs: list[Hashable] = []

    async def worker(key: Hashable) -> float | None:
        runs.append(key)
        if len(runs) == 1:
            raise RuntimeError("boom")
        return None

    async def main() -> None:
        q = WorkQueue(worker, retry_s=0.01)
        q.enqueue("c")
        while len(runs) < 2:
            await asyncio.sleep(0.01)
        await q.close()

    asyncio.run(main())
    assert runs == ["c", "c"]


def test_sub_millicore_values_compare_as_the_api_server_stores_them() -> None:
    # cpu "0.00001" is kept as "1m": it drifted on every resync and was applied again
    assert same_quantity("0.00001", "1m") and same_quantity("1.0001", "1001m")
    assert not same_quantity("0.002", "1m") and same_quantity("1500m", "1.5")
