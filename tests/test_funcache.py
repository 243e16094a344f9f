"""Functions sent again and again are pickled once, and only while their bytes cannot change."""

from __future__ import annotations

import math
from typing import Any

import pytest

import pxgrpc
from pxgrpc.client import funcache

pytestmark = pytest.mark.timeout(120)

LIMIT = 3


def plain() -> float:
    return math.pi


def names_a_global() -> int:
    return LIMIT


def test_which_functions_are_cached() -> None:
    def with_closure() -> int:
        return len(plain.__name__) + x

    def mutable_default(y: list[int] = []) -> list[int]:  # noqa: B006
        return y

    x = 1
    assert funcache._fingerprint(plain) is not None  # names only a module (math)
    assert funcache._fingerprint(lambda a=1, *, b="s": a) is not None
    assert funcache._fingerprint(names_a_global) is None  # LIMIT can be rebound
    assert funcache._fingerprint(with_closure) is None
    assert funcache._fingerprint(mutable_default) is None
    assert funcache._fingerprint(print) is None and funcache._fingerprint(x) is None
    tagged = pxgrpc.interactive(lambda: None)
    tagged.note = "attributes travel with the function"  # type: ignore[attr-defined]
    assert funcache._fingerprint(tagged) is None


def test_a_cached_function_is_encoded_again_once_it_changes() -> None:
    def f(a: int = 1) -> int:
        return a

    value = funcache.lookup(f)
    assert value is None
    from pxgrpc import wire

    encoded = wire.encode(f)[0]
    funcache.store(f, encoded)
    assert funcache.lookup(f) is encoded
    f.__defaults__ = (2,)
    assert funcache.lookup(f) is None
    funcache.store(f, wire.encode(f)[0])
    f.__code__ = (lambda a=1: a + 1).__code__
    assert funcache.lookup(f) is None


def test_engines_run_the_function_as_it_is_now(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=1)
    e0 = rc[0]

    def f(a: int = 1) -> int:
        return a

    assert e0.apply_sync(f) == 1
    assert e0.apply_sync(f) == 1  # (cached)
    f.__defaults__ = (2,)
    assert e0.apply_sync(f) == 2
    f.__code__ = (lambda a=1: a * 10).__code__
    assert e0.apply_sync(f) == 20


def test_engines_keep_only_functions_no_call_can_change(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """An engine unpickles a function from the client's __main__ once and keeps it, but only
    when no call can change it: a mutable default or a closure is fresh in every call, as
    when each call unpickles its own copy (ipyparallel's behaviour)."""
    _, rc = make_cluster(n=1)
    e0 = rc[0]

    @pxgrpc.interactive
    def collect(x: int, seen: list[int] = []) -> list[int]:  # noqa: B006
        seen.append(x)
        return list(seen)

    def counter() -> Any:
        count = [0]

        def bump() -> int:
            count[0] += 1
            return count[0]

        return bump

    bump = pxgrpc.interactive(counter())
    assert [e0.apply_sync(collect, i) for i in range(3)] == [[0], [1], [2]]
    assert [e0.apply_sync(bump) for _ in range(3)] == [1, 1, 1]


@pxgrpc.interactive
def read_a() -> Any:
    return a  # type: ignore[name-defined]  # noqa: F821


@pxgrpc.interactive
def helper() -> str:
    return "helper"


@pxgrpc.interactive
def uses_helper() -> str:
    return helper()


def test_a_kept_function_sees_the_engine_namespace_of_each_call(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=2)
    dv = rc[:]
    for value in (1, "two", [3]):
        dv.push({"a": value}, block=True)
        assert dv.apply_sync(read_a) == [value, value]
    assert dv.apply_sync(uses_helper) == ["helper"] * 2
    dv.execute("del helper", block=True)
    assert dv.apply_sync(uses_helper) == ["helper"] * 2  # (the function brings its helper again)

    @pxgrpc.interactive
    def read_a_too() -> Any:
        return ("other", a)  # type: ignore[name-defined]  # noqa: F821

    read_a_too.__name__ = read_a_too.__qualname__ = "read_a"  # (same name, another body)
    assert dv.apply_sync(read_a_too) == [("other", [3])] * 2
    assert dv.apply_sync(read_a) == [[3]] * 2
