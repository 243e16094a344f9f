"""Engines whose protocol, Python or cloudpickle differ from the client's are named at connect time."""

from __future__ import annotations

import warnings

import pytest

import pxgrpc as ipp
from pxgrpc import versions

pytestmark = pytest.mark.timeout(60)


def test_mismatch_names_both_versions_of_what_differs() -> None:
    mine = versions.Versions("1", "3.11.7", "3.1.1")
    assert versions.mismatch(versions.Versions("1", "3.11.2", "3.1.1"), mine) == ""  # (a patch release)
    text = versions.mismatch(versions.Versions("2", "3.9.18", "2.2.1"), mine)
    assert text == (
        "pxgrpc protocol 2 (this client: 1), Python 3.9.18 (this client: 3.11.7), "
        "cloudpickle 2.2.1 (this client: 3.1.1)"
    )


def test_an_engine_with_another_cloudpickle_and_python_is_reported_in_one_line(make_cluster) -> None:  # type: ignore[no-untyped-def]
    fake = "cloudpickle=0.0.1,python=3.6.15"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ipp.VersionMismatchWarning)  # (the cluster's own client)
        cluster, rc = make_cluster(n=1, env={versions.FAKE_VERSIONS_VARIABLE: fake})
    mine = versions.local()
    with pytest.warns(ipp.VersionMismatchWarning) as caught, ipp.Client(cluster.connection_file) as other:
        assert other.ids == [0]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    line = messages[0]
    assert "\n" not in line
    assert line.startswith("engine 0 (pid ")
    assert f"cloudpickle 0.0.1 (this client: {mine.cloudpickle})" in line
    assert f"Python 3.6.15 (this client: {mine.python})" in line
    assert rc.engines[0]["cloudpickle"] == "0.0.1"


def test_engines_like_the_client_raise_no_warning(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, _ = make_cluster(n=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ipp.VersionMismatchWarning)
        with ipp.Client(cluster.connection_file) as other:
            assert other.ids == [0]
            assert other.engines[0]["protocol"] == versions.PROTOCOL_VERSION
