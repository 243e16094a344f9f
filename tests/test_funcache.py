"""Functions sent again and again are pickled once, and only while their bytes cannot change."""

from __future__ import annotations

import math

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
