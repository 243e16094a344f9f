"""ipyparallel code run unchanged (issue 15, part A): `Reference` arguments, task dependencies
(`after`, `follow`, `timeout`, `@require`, `@depend`, `Dependency`), lazy `imap`,
`return_exceptions`, `apply(f, f=...)`, pushed `@interactive` functions, the errors ipyparallel
code catches, and the `pxgrpc.error` / `pxgrpc.util` modules. Against real clusters."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest

import pxgrpc as ipp
from pxgrpc.cluster import Cluster

pytestmark = pytest.mark.timeout(60)

# Engines cannot import this test module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def rc(cluster3: tuple[Cluster, ipp.Client]) -> ipp.Client:
    return cluster3[1]


@pytest.fixture
def lview(rc: ipp.Client) -> ipp.LoadBalancedView:
    return rc.load_balanced_view()


def sleep_then_return(seconds: float, value: Any) -> Any:
    import time

    time.sleep(seconds)
    return value


def wait_for_file(path: str, value: Any) -> Any:
    """A task that runs until the test creates `path` (at most 30 s)."""
    import os
    import time

    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


@pytest.fixture
def gate(tmp_path: Any) -> Iterator[str]:
    """A path for `wait_for_file`; created after the test, so no engine is left waiting."""
    path = str(tmp_path / "open")
    try:
        yield path
    finally:
        open(path, "w").close()


def fail(message: str) -> None:
    raise ValueError(message)


def identity(*args: Any) -> Any:
    return args


# --- Reference ------------------------------------------------------------------------------------


def test_reference_arguments_become_the_engines_variables_in_apply_map_and_containers(rc: ipp.Client) -> None:
    dv = rc[:]
    dv.push({"a": 5, "b": [1, 2]}, block=True)
    rc[1].push({"a": 6}, block=True)
    a, b = ipp.Reference("a"), ipp.Reference("b")
    got = dv.apply_sync(identity, a, [a, (b,)], {"k": {"b": b}})
    assert got[0] == (5, [5, ([1, 2],)], {"k": {"b": [1, 2]}})
    assert got[1][0] == 6
    assert rc[0].apply_sync(lambda x, *, y: (x, y), a, y=b) == (5, [1, 2])
    assert set(rc.load_balanced_view().map_sync(lambda x: x * 2, [a] * 3)) <= {10, 12}
    assert sorted(dv.map_sync(lambda x: x, [a, a, a])) == [5, 5, 6]
    with pytest.raises(ipp.RemoteError, match="NameError"):
        rc[0].apply_sync(identity, ipp.Reference("not_defined_anywhere"))
    with pytest.raises(ValueError, match="not a variable name"):
        ipp.Reference("1 + 1")


# --- dependencies on other tasks --------------------------------------------------------------------


def test_after_holds_a_task_until_the_tasks_it_depends_on_are_done(lview: ipp.LoadBalancedView) -> None:
    first = lview.apply_async(sleep_then_return, 0.5, "first")
    with lview.temp_flags(after=first):
        second = lview.apply_async(time.time)
    assert second.get(timeout=20) >= first.metadata["completed"].timestamp()
    assert lview.after == ipp.Dependency()  # temp_flags restored the view's flags


def test_follow_runs_a_task_on_the_engine_where_its_dependency_ran(lview: ipp.LoadBalancedView) -> None:
    for _ in range(3):
        placed = lview.apply_async(os.getpid)
        placed.get(timeout=20)
        lview.set_flags(follow=placed)
        try:
            followers = [lview.apply_async(os.getpid) for _ in range(4)]
        finally:
            lview.set_flags(follow=None)
        assert {f.get(timeout=20) for f in followers} == {placed.get()}
        assert {f.engine_id for f in followers} == {placed.engine_id}


def test_following_tasks_that_ran_on_different_engines_is_impossible(rc: ipp.Client) -> None:
    on0, on1 = rc[0].apply_async(os.getpid), rc[1].apply_async(os.getpid)
    lview = rc.load_balanced_view()
    with (
        lview.temp_flags(follow=[on0, on1]),
        pytest.raises(ipp.ImpossibleDependency, match="different engines"),
    ):
        lview.apply_sync(os.getpid)
    with lview.temp_flags(follow=ipp.Dependency([on0, on1], all=False)):
        assert lview.apply_sync(os.getpid) in (on0.get(), on1.get())


def test_a_failed_dependency_fails_the_task_at_once_with_impossible_dependency(
    lview: ipp.LoadBalancedView,
) -> None:
    failed = lview.apply_async(fail, "boom")
    with lview.temp_flags(after=failed):
        doomed = lview.apply_async(time.time)
    with pytest.raises(ipp.RemoteError) as info:
        doomed.get(timeout=20)
    assert isinstance(info.value, ipp.error.ImpossibleDependency)
    assert info.value.ename == "ImpossibleDependency"
    # Counting failures as done (success=False, failure=True): the task runs.
    with lview.temp_flags(after=ipp.Dependency(failed, success=False, failure=True)):
        assert lview.apply_sync(lambda: "ran") == "ran"


def test_any_of_several_dependencies_is_enough_with_all_false(lview: ipp.LoadBalancedView, gate: str) -> None:
    quick = lview.apply_async(sleep_then_return, 0.0, "quick")
    slow = lview.apply_async(wait_for_file, gate, "slow")
    with lview.temp_flags(after=ipp.Dependency([quick, slow], all=False)):
        assert lview.apply_async(lambda: "ran").get(timeout=20) == "ran"
    assert not slow.ready()


def test_an_unknown_task_id_fails_at_once_with_invalid_dependency(lview: ipp.LoadBalancedView) -> None:
    with lview.temp_flags(after="no-such-task"):
        ar = lview.apply_async(time.time)
    with pytest.raises(ipp.InvalidDependency, match="no-such-task"):
        ar.get(timeout=5)
    mapped = lview.map(lambda x: x, range(3), after=["no-such-task"], block=False)
    with pytest.raises(ipp.CompositeError) as info:
        mapped.get(timeout=5)
    assert all(isinstance(e, ipp.InvalidDependency) for e in info.value.elist)
    with pytest.raises(TypeError, match="invalid dependency"):
        lview.set_flags(after=[3.5])
    with pytest.raises(ValueError, match="timeout"):
        lview.set_flags(timeout=-1)


def test_a_dependency_that_does_not_finish_in_time_raises_dependency_timeout(
    lview: ipp.LoadBalancedView, gate: str
) -> None:
    slow = lview.apply_async(wait_for_file, gate, "slow")
    with lview.temp_flags(after=slow, timeout=0.2):
        late = lview.apply_async(time.time)
    with pytest.raises(ipp.error.DependencyTimeout, match=r"0\.2 s"):
        late.get(timeout=20)
    assert not slow.ready()


def test_a_task_held_for_its_dependencies_can_be_aborted(lview: ipp.LoadBalancedView, gate: str) -> None:
    slow = lview.apply_async(wait_for_file, gate, "slow")
    with lview.temp_flags(after=slow):
        held = lview.apply_async(time.time)
    assert held.msg_ids[0] in held.abort()
    with pytest.raises(ipp.TaskAborted):
        held.get(timeout=20)
    assert not slow.ready()


def test_closing_the_client_fails_the_tasks_it_still_holds(rc: ipp.Client, gate: str) -> None:
    other = ipp.Client(connection_info=rc.connection_info)
    try:
        lview = other.load_balanced_view()
        slow = lview.apply_async(wait_for_file, gate, "slow")
        with lview.temp_flags(after=slow):
            held = lview.apply_async(time.time)
    finally:
        other.close()
    with pytest.raises(ipp.PxConnectionError, match="closed"):
        held.get(timeout=20)


# --- dependencies checked on the engine ---------------------------------------------------------------


def test_require_imports_modules_for_the_task_and_sends_it_where_they_exist(rc: ipp.Client) -> None:
    lview = rc.load_balanced_view()

    @ipp.require("json")
    @ipp.interactive  # (as functions of a notebook are: they see the engine's namespace)
    def dumps(value: Any) -> str:
        return json.dumps(value)  # type: ignore[name-defined]  # noqa: F821 - imported by require

    assert lview.apply_sync(dumps, [1]) == "[1]"
    rc[2].execute(
        "import sys, types\nsys.modules['only_on_two'] = types.ModuleType('only_on_two')", block=True
    )

    @ipp.require("only_on_two")
    def where() -> int:
        return os.getpid()

    pid2 = rc[2].apply_sync(os.getpid)
    assert {lview.apply_async(where).get(timeout=20) for _ in range(6)} == {pid2}

    @ipp.require("only_on_two")
    def pid_of(_: int) -> int:
        return os.getpid()

    assert set(lview.map_sync(pid_of, range(6))) == {pid2}

    def helper() -> str:
        return "helped"

    @ipp.require(helper, answer=42)
    @ipp.interactive
    def uses_helper() -> tuple[str, int]:
        return helper(), answer  # type: ignore[name-defined]  # noqa: F821 - bound by require

    assert lview.apply_sync(uses_helper) == ("helped", 42)

    @ipp.require("no_such_module_anywhere")
    def never() -> int:
        return 1

    with pytest.raises(ipp.ImpossibleDependency, match="no_such_module_anywhere"):
        lview.apply_sync(never)


def test_depend_runs_a_task_only_where_its_condition_holds(rc: ipp.Client) -> None:
    rc[:].push({"suitable": False}, block=True)
    rc[1].push({"suitable": True}, block=True)

    @ipp.interactive
    def engine_is_suitable() -> bool:
        return suitable  # type: ignore[name-defined]  # noqa: F821 - an engine variable

    @ipp.depend(engine_is_suitable)
    def work() -> str:
        return "done"

    lview = rc.load_balanced_view()
    ars = [lview.apply_async(work) for _ in range(5)]
    assert [ar.get(timeout=20) for ar in ars] == ["done"] * 5
    assert {ar.engine_id for ar in ars} == {1}
    rc[1].push({"suitable": False}, block=True)
    with pytest.raises(ipp.ImpossibleDependency):
        lview.apply_sync(work)


# --- imap, map, return_exceptions ---------------------------------------------------------------------


def test_imap_over_an_endless_generator_keeps_max_outstanding_tasks_in_flight(
    lview: ipp.LoadBalancedView,
) -> None:
    read = []

    def numbers() -> Iterator[int]:
        for i in itertools.count():
            read.append(i)
            yield i

    ordered = lview.imap(lambda x: x * x, numbers(), max_outstanding=2)
    assert [next(ordered) for _ in range(5)] == [0, 1, 4, 9, 16]
    assert len(read) <= 5 + 2
    read.clear()
    unordered = lview.imap(lambda x: x, numbers(), max_outstanding=3, ordered=False)
    first = [next(unordered) for _ in range(10)]
    assert len(set(first)) == 10 and max(first) < 10 + 3
    assert len(read) <= 10 + 3


def test_return_exceptions_puts_exceptions_in_place_of_results(rc: ipp.Client) -> None:
    def maybe(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    lview = rc.load_balanced_view()
    got = lview.map_sync(maybe, range(4), return_exceptions=True)
    assert got[:2] == [0, 1] and got[3] == 3
    assert isinstance(got[2], ipp.RemoteError) and got[2].ename == "ValueError"
    ar = lview.map_async(maybe, range(4))
    assert ar.get(timeout=20, return_exceptions=True)[2].ename == "ValueError"
    with pytest.raises(ipp.RemoteError):
        ar.get()
    assert [type(r).__name__ for r in lview.imap(maybe, range(4), return_exceptions=True)] == [
        "int",
        "int",
        "RemoteError",
        "int",
    ]
    per_engine = rc[:].apply_async(lambda: 1 / 0).get(timeout=20, return_exceptions=True)
    assert [e.ename for e in per_engine] == ["ZeroDivisionError"] * 3
    by_chunk = rc[:].map_sync(maybe, range(6), return_exceptions=True)
    assert by_chunk[:2] == [0, 1] and by_chunk[2].ename == "ValueError" and by_chunk[3:] == [4, 5]


def test_direct_view_map_takes_an_iterator_without_len(rc: ipp.Client) -> None:
    assert rc[:].map_sync(lambda x: x + 1, (i for i in range(7))) == list(range(1, 8))
    assert rc[:].map_sync(lambda a, b: a * b, iter([1, 2, 3]), range(3)) == [0, 2, 6]


# --- apply's own parameters, @interactive -------------------------------------------------------------


def test_a_keyword_named_like_an_apply_parameter_reaches_the_function(
    rc: ipp.Client, lview: ipp.LoadBalancedView
) -> None:
    def g(f: int, block: str = "", targets: str = "") -> tuple[int, str, str]:
        return f, block, targets

    assert rc[0].apply_sync(g, f=1, block="b", targets="t") == (1, "b", "t")
    assert rc[0].apply_async(g, f=2).get(timeout=20) == (2, "", "")
    assert lview.apply_sync(g, f=3) == (3, "", "")
    assert lview.apply(g, f=4).get(timeout=20) == (4, "", "")


def test_a_pushed_interactive_function_sees_the_engines_namespace(rc: ipp.Client) -> None:
    @ipp.interactive
    def g() -> Any:
        return engine_value  # type: ignore[name-defined]  # noqa: F821 - an engine variable

    dv = rc[:]
    dv.push({"engine_value": "from the engine", "pushed_g": g}, block=True)
    # (`pushed_g` is a global name here, as in a notebook: the engine's own is called.)
    calls_it = ipp.interactive(lambda: pushed_g())  # type: ignore[name-defined]  # noqa: F821
    assert dv.apply_sync(calls_it) == ["from the engine"] * 3
    dv.execute("seen = pushed_g()", block=True)
    assert dv.pull("seen", block=True) == ["from the engine"] * 3


# --- errors ---------------------------------------------------------------------------------------


def test_a_task_lost_with_its_engine_is_a_remote_error_named_engine_error(make_cluster) -> None:  # type: ignore[no-untyped-def]
    _, rc = make_cluster(n=2)
    pid = rc[1].apply_sync(os.getpid)
    running = rc[1].apply_async(time.sleep, 30)
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ipp.RemoteError) as info:
        running.get(timeout=20)
    assert isinstance(info.value, ipp.EngineError)
    assert info.value.ename == "EngineError" and "engine 1" in str(info.value)
    assert "EngineError: engine 1" in "\n".join(info.value.render_traceback())
    # ... and a task following one that ran there cannot run anywhere.
    lview = rc.load_balanced_view()
    deadline = time.monotonic() + 10
    while rc.ids != [0] and time.monotonic() < deadline:
        time.sleep(0.05)
    with lview.temp_flags(follow=ipp.Dependency(running, failure=True)):
        orphan = lview.apply_async(os.getpid)
    with pytest.raises(ipp.ImpossibleDependency, match="gone"):
        orphan.get(timeout=20)


def test_composite_error_shows_at_most_tb_limit_tracebacks(rc: ipp.Client) -> None:
    with pytest.raises(ipp.CompositeError) as info:
        rc[:].apply_sync(fail, "everywhere")
    err = info.value
    assert ipp.CompositeError.tb_limit == 4 and len(err.elist) == 3
    assert "more exceptions ..." not in str(err)
    err.tb_limit = 1
    assert str(err).count("ValueError") == 1 and "... 2 more exceptions ..." in str(err)
    rendered = err.render_traceback()
    assert rendered.count("[0:ValueError]") == 1 and rendered.count("Traceback (most recent call last):") == 1
    assert "[1:ValueError] everywhere" in rendered  # the others: one line each
    assert "[2:ValueError]" in err.render_traceback(2)
    with pytest.raises(IndexError):
        err.raise_exception(5)


def test_ipyparallel_module_layout_is_importable() -> None:
    from pxgrpc import error
    from pxgrpc.util import interactive

    assert error.RemoteError is ipp.RemoteError and ipp.error.CompositeError is ipp.CompositeError
    assert issubclass(error.EngineError, error.RemoteError)
    assert issubclass(error.DependencyTimeout, error.ImpossibleDependency)
    assert issubclass(error.InvalidDependency, error.ImpossibleDependency)
    assert issubclass(error.ImpossibleDependency, error.UnmetDependency)
    assert issubclass(error.UnmetDependency, error.RemoteError)
    assert error.KernelError is ipp.PxError and error.NoEnginesRegistered is ipp.NoEnginesError
    assert interactive is ipp.interactive
