"""%px and friends in a real Jupyter kernel (ipykernel), against a real 7-engine cluster.

The seed notebook runs through nbclient; the other tests drive one kernel cell by cell with
jupyter_client and look at its iopub messages (order and content, never wall-clock time).
"""

from __future__ import annotations

import ast
import base64
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
from IPython.core.error import UsageError
from nbclient import NotebookClient
from notebooks.kernel import KernelSession, stdout_blocks
from notebooks.seed import seed_notebook

import pxgrpc
from pxgrpc.cluster import Cluster
from pxgrpc.ipython.arguments import parse_interrupt_signal

pytestmark = pytest.mark.timeout(90)

N = 7
ALL = list(range(N))
OUT = re.compile(r"Out\[(\d+):(\d+)\]: (.*)", re.S)


@pytest.fixture(scope="module")
def cluster7() -> Iterator[tuple[Cluster, pxgrpc.Client]]:
    cluster = Cluster(n=N)
    try:
        rc = cluster.start_and_connect_sync(timeout=60)
        yield cluster, rc
    finally:
        cluster.stop_cluster_sync()


def kernel_env(cluster: Cluster) -> dict[str, str]:
    """The kernel finds the cluster the way a user's would: through the connection file."""
    return {**os.environ, "PXGRPC_CONNECTION_FILE": str(cluster.connection_file)}


@pytest.fixture(scope="module")
def kernel(cluster7: tuple[Cluster, pxgrpc.Client]) -> Iterator[KernelSession]:
    session = KernelSession(kernel_env(cluster7[0]))
    try:
        cell = session.run(
            "import os, time\nimport pxgrpc as ipp\nrc = ipp.Client()\nrc.wait_for_engines(7, 30)"
        )
        assert cell.status == "ok", cell.summary()
        yield session
    finally:
        session.close()


def out_values(outputs: list[str]) -> dict[int, str]:
    """{engine: value text} from `Out[engine:count]: value` outputs."""
    values = {}
    for text in outputs:
        match = OUT.fullmatch(text)
        if match:
            values[int(match.group(1))] = match.group(3)
    return values


def nb_outputs(cell: Any) -> tuple[str, list[str]]:
    """A notebook cell's stdout text and the text/plain of its display and execute outputs."""
    stdout = "".join(
        o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stdout"
    )
    plain = [
        o["data"]["text/plain"]
        for o in cell.outputs
        if o["output_type"] in ("display_data", "execute_result")
    ]
    return stdout, plain


def literal(outputs: tuple[str, list[str]]) -> Any:
    """The value shown as a cell's single Out[] (pretty-printed Python)."""
    assert len(outputs[1]) == 1, outputs
    return ast.literal_eval(outputs[1][0])


def run_notebook(nb: nbformat.NotebookNode, cluster: Cluster, path: str) -> nbformat.NotebookNode:
    client = NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": path}})
    client.execute(env=kernel_env(cluster))
    return nb


# --- the seed notebook -----------------------------------------------------------------------


def test_seed_notebook_runs_in_jupyter_and_shows_what_ipyparallel_shows(cluster7, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = cluster7
    nb = run_notebook(seed_notebook(), cluster, str(tmp_path))
    cells = {c.source: c for c in nb.cells}

    def outputs_of(start: str) -> tuple[str, list[str]]:
        found = [c for src, c in cells.items() if src == start or src.startswith(start + "\n")]
        assert len(found) == 1, start
        return nb_outputs(found[0])

    pids = {e["id"]: e["pid"] for e in rc.engines}
    assert outputs_of("rc.ids # list the ids of the engine the client can communicate with")[1] == [repr(ALL)]
    assert outputs_of("dv = rc[:]")[1] == ["<DirectView [0, 1, 2, 3,...]>"]
    _, out = outputs_of("%%px\nimport os")
    assert {e: int(v) for e, v in out_values(out).items()} == pids
    _, out = outputs_of("%%px\nfoo")
    assert out_values(out) == {e: repr(f"bar on pid {pid}") for e, pid in pids.items()}
    assert literal(outputs_of("dv['foo']")) == [f"bar on pid {pids[e]}" for e in ALL]
    assert literal(outputs_of("# now we can overwrite its value")) == ["bar"] * N
    assert outputs_of(
        "# Now we have a variable on each engine that holds an equal amount of the original list."
    )[1] == [repr([None] * N)]

    stdout, _ = outputs_of('%%px\nprint("Len", len(user_id_chunk))')
    lengths, maxima = [143] * 6 + [142], [142, 285, 428, 571, 714, 857, 999]
    assert stdout_blocks(stdout) == {e: f"Len {lengths[e]}\nMax {maxima[e]}\n" for e in ALL}
    assert stdout.startswith("[stdout:0] \nLen 143\nMax 142\n")

    assert outputs_of("the_most_interesting_transformation_ever(1)")[1] == ["'ID:3'"]
    stdout, _ = outputs_of("# Now we have 4 separate list of transformed ids. ")
    first_ten = ["ID:0", "ID:3", "ID:6", "ID:9", "ID:12", "ID:15", "ID:18", "ID:21", "ID:24", "ID:27"]
    assert stdout == f"1000\n{first_ten}\n"
    every_output = [o for c in nb.cells for o in c.outputs]
    assert not [o for o in every_output if o["output_type"] == "error"]
    assert not [o for o in every_output if "unknown result" in str(o)]


def test_load_ext_connects_to_the_local_cluster_on_first_use(cluster7, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster, rc = cluster7
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(src) for src in ("%load_ext pxgrpc", "%px import os", "%px os.getpid()")
    ]
    run_notebook(nb, cluster, str(tmp_path))
    _, out = nb_outputs(nb.cells[2])
    assert {e: int(v) for e, v in out_values(out).items()} == {e["id"]: e["pid"] for e in rc.engines}


# --- live output and interrupts --------------------------------------------------------------


def test_px_shows_each_line_while_the_engines_still_run(kernel: KernelSession) -> None:
    cell = kernel.run(
        "%%px --targets 0 --progress-after -1\n"
        "import time\n"
        "for i in range(7):\n"
        "    print('line', i)\n"
        "    time.sleep(0.3)\n"
    )
    assert cell.status == "ok", cell.summary()
    streams = [m for m in cell.messages if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"]
    first = next(i for i, m in enumerate(streams) if "line 0" in m["content"]["text"])
    last = next(i for i, m in enumerate(streams) if "line 6" in m["content"]["text"])
    # The first line was published in its own, earlier message: it reached the notebook while
    # the engine was still printing (without streaming, all lines come in one message at the end).
    assert first < last
    assert streams[first]["header"]["date"] < streams[last]["header"]["date"]
    assert stdout_blocks(cell.stream()) == {0: "".join(f"line {i}\n" for i in range(7))}


def wait_until_busy(rc: pxgrpc.Client, engines: list[int]) -> None:
    deadline = time.monotonic() + 30
    while not all(e["state"] == "busy" for e in rc.engines if e["id"] in engines):
        assert time.monotonic() < deadline, rc.engines
        time.sleep(0.02)


def test_kernel_interrupt_stops_a_px_cell_and_the_engines_stay_usable(kernel, cluster7) -> None:  # type: ignore[no-untyped-def]
    assert kernel.run("%px marker = 'kept'\n").status == "ok"
    cell = kernel.submit("%%px\nimport time\nprint('sleeping')\ntime.sleep(60)\n")
    kernel.read_until(cell, lambda c: len(stdout_blocks(c.stream())) == N)
    wait_until_busy(cluster7[1], ALL)
    kernel.interrupt()
    kernel.finish(cell)
    # As in ipyparallel: the signal is sent, the engines' answers shown, and no local traceback.
    assert cell.status == "ok", cell.summary()
    assert not cell.of_type("error")
    stderr = cell.stream("stderr")
    assert "Received Keyboard Interrupt. Sending signal SIGINT to engines..." in stderr
    assert all(f"[{e}:KeyboardInterrupt]" in stderr for e in ALL), stderr
    after = kernel.run("%%px\nprint(marker)\n")
    assert after.status == "ok"
    assert stdout_blocks(after.stream()) == {e: "kept\n" for e in ALL}


def test_kernel_interrupt_during_get_interrupts_the_engines(kernel, cluster7, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The interrupt must come while `ar.get()` waits and every engine runs its task: the cell
    # says when `ar` is set, and each engine leaves a file once its task runs.
    running = tmp_path / "running-"
    cell = kernel.submit(
        "def napping(path):\n"
        "    import os, time\n"
        "    open(path + str(os.getpid()), 'w').close()\n"
        "    time.sleep(60)\n"
        f"ar = rc[:].apply_async(napping, {str(running)!r})\n"
        "print('sent', flush=True)\n"
        "ar.get()\n"
    )
    kernel.read_until(cell, lambda c: "sent" in c.stream())
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("running-*"))) < N:
        assert time.monotonic() < deadline, list(tmp_path.iterdir())
        time.sleep(0.02)
    wait_until_busy(cluster7[1], ALL)
    kernel.interrupt()
    kernel.finish(cell)
    assert cell.status == "error"
    assert cell.error()["ename"] == "KeyboardInterrupt"
    check = kernel.run(
        "ar.wait(30)\nprint(sorted({e.ename for e in ar.exception().elist}), rc[:].apply_sync(abs, -1))"
    )
    assert check.stream() == f"['KeyboardInterrupt'] {[1] * N}\n"


def test_signal_on_interrupt_sigterm_ends_the_engines_of_a_px_cell(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster, _ = make_cluster(n=3)
    session = KernelSession(kernel_env(cluster))
    try:
        connect = session.run("import pxgrpc as ipp\nrc = ipp.Client()\nrc.wait_for_engines(3, 30)")
        assert connect.status == "ok", connect.summary()
        cell = session.submit(
            "%%px --targets 0,1 --signal-on-interrupt term\nimport time\nprint('sleeping')\ntime.sleep(60)\n"
        )
        session.read_until(cell, lambda c: len(stdout_blocks(c.stream())) == 2)
        session.interrupt()
        session.finish(cell)
        assert cell.status == "ok", cell.summary()
        stderr = cell.stream("stderr")
        assert "Received Keyboard Interrupt. Sending signal SIGTERM to engines..." in stderr
        for e in (0, 1):
            died = rf"engine {e} .* after an Interrupt sent it SIGTERM"
            assert re.search(died, stderr), stderr
        after = session.run("rc.wait_for_engines(1, 10)\nprint(rc.ids)\n%px print('still serving')")
        assert after.status == "ok", after.summary()
        assert after.stream() == "[2]\n[stdout:2] \nstill serving\n"
    finally:
        session.close()


def test_px_timeout_interrupts_the_slow_engines_names_them_and_leaves_them_usable(kernel) -> None:  # type: ignore[no-untyped-def]
    assert kernel.run("%px marker = 'kept'\n").status == "ok"
    cell = kernel.run(
        "%%px --timeout 3\nimport time, pxgrpc\nprint('started')\n"
        "time.sleep(60 if pxgrpc.engine_id() in (2, 5) else 0)\nprint('finished')\n"
    )
    assert cell.status == "error", cell.summary()
    error = cell.error()
    assert error["ename"] == "TimeoutError", error
    assert "engine(s) [2, 5] did not finish within --timeout 3 s" in error["evalue"], error
    assert "stay usable" in error["evalue"]
    blocks = stdout_blocks(cell.stream())
    assert all(blocks[e] == "started\nfinished\n" for e in ALL if e not in (2, 5)), blocks
    after = kernel.run("%%px\nprint(marker)\n")
    assert after.status == "ok", after.summary()
    assert stdout_blocks(after.stream()) == {e: "kept\n" for e in ALL}


def test_pxconfig_timeout_applies_to_every_px_cell(kernel) -> None:  # type: ignore[no-untyped-def]
    try:
        assert kernel.run("%pxconfig --timeout 2").status == "ok"
        assert "timeout=2" in kernel.run("%pxconfig").stream()
        cell = kernel.run("%px import time; time.sleep(60)")
        assert cell.status == "error" and cell.error()["ename"] == "TimeoutError", cell.summary()
        assert f"engine(s) {ALL} did not finish within --timeout 2 s" in cell.error()["evalue"]
        assert kernel.run("%px x = 1 + 1").status == "ok"
    finally:
        kernel.run("%pxconfig --timeout 0")
    assert "timeout=0" in kernel.run("%pxconfig").stream()
    assert kernel.run("%%px\nprint(x)\n").status == "ok"


# --- the magics -----------------------------------------------------------------------------


def test_autopx_runs_every_cell_on_the_engines_until_toggled_off(kernel, cluster7) -> None:  # type: ignore[no-untyped-def]
    assert "%autopx enabled" in kernel.run("%autopx").stream()
    assert kernel.run("autopx_value = 6 * 7").status == "ok"
    printed = kernel.run("print(autopx_value)")
    assert stdout_blocks(printed.stream()) == {e: "42\n" for e in ALL}
    assert "%autopx disabled" in kernel.run("%autopx").stream()
    assert kernel.run("'autopx_value' in globals()").plain() == ["False"]
    assert cluster7[1][:]["autopx_value"] == [42] * N


def test_pxresult_shows_the_result_of_a_noblock_cell(kernel: KernelSession) -> None:
    submitted = kernel.run("%%px --noblock\nimport time\ntime.sleep(0.2)\n'later'")
    assert "AsyncResult" in submitted.plain()[0]
    shown = kernel.run("%pxresult")
    assert out_values(shown.plain()) == {e: "'later'" for e in ALL}


@pytest.mark.parametrize(
    ("flag", "engines"),
    [("::2", [0, 2, 4, 6]), ("1", [1]), ("0,3", [0, 3]), ("[5,6]", [5, 6]), ("=-2:", [5, 6]), ("all", ALL)],
)
def test_targets_choose_the_engines(kernel: KernelSession, flag: str, engines: list[int]) -> None:
    sep = "" if flag.startswith("=") else " "
    cell = kernel.run(f"%%px --targets{sep}{flag}\nimport os\nos.getpid()")
    assert cell.status == "ok", cell.summary()
    assert sorted(out_values(cell.plain())) == engines


def test_pxconfig_sets_default_targets_and_verbosity(kernel: KernelSession) -> None:
    try:
        assert kernel.run("%pxconfig --targets 1:3 --verbose").status == "ok"
        cell = kernel.run("%px 'configured'")
        assert "Parallel execution on engine(s): [1, 2]" in cell.stream()
        assert sorted(out_values(cell.plain())) == [1, 2]
    finally:
        kernel.run("%pxconfig --targets all --no-verbose")
    assert "targets='all'" in kernel.run("%pxconfig").stream()


@pytest.mark.parametrize(
    ("text", "number"),
    [("SIGINT", 2), ("sigterm", 15), ("INT", 2), ("Term", 15), ("15", 15), (" 9 ", 9), ("0", 0), ("none", 0)],
)
def test_signal_on_interrupt_takes_signal_names_and_numbers(text: str, number: int) -> None:
    assert parse_interrupt_signal(text) == number


@pytest.mark.parametrize("text", ["SIGBOGUS", "bogus", "999", "-15", "15.0", "SIG_DFL", "SIGTERM,"])
def test_signal_on_interrupt_refuses_what_is_no_signal(text: str) -> None:
    with pytest.raises(UsageError, match=r"--signal-on-interrupt .*not a signal here"):
        parse_interrupt_signal(text)


def test_pxconfig_sets_the_signal_on_interrupt(kernel: KernelSession) -> None:
    try:
        assert kernel.run("%pxconfig --signal-on-interrupt 15").status == "ok"
        assert "signal_on_interrupt=SIGTERM" in kernel.run("%pxconfig").stream()
        assert kernel.run("%pxconfig --signal-on-interrupt none").status == "ok"
        assert "signal_on_interrupt=0" in kernel.run("%pxconfig").stream()
        refused = kernel.run("%pxconfig --signal-on-interrupt SIGNOPE")
        assert "UsageError" in refused.stream("stderr") and "SIGNOPE" in refused.stream("stderr")
        refused = kernel.run("%%px --signal-on-interrupt 12345\n1")
        assert "UsageError" in refused.stream("stderr") and "12345" in refused.stream("stderr")
    finally:
        kernel.run("%pxconfig --signal-on-interrupt SIGINT")
    assert "signal_on_interrupt=SIGINT" in kernel.run("%pxconfig").stream()


def test_errors_on_engines_show_each_remote_traceback(kernel: KernelSession) -> None:
    cell = kernel.run("%%px\nx = 1\n1/0\n")
    assert cell.status == "error"
    # Streaming shows every engine's error, then ends the cell with AlreadyDisplayedError.
    error = cell.error()
    assert (error["ename"], error["traceback"]) == ("AlreadyDisplayedError", [f"{N} errors"])
    shown = cell.stream("stderr")
    assert all(f"[{e}:ZeroDivisionError]" in shown for e in ALL)
    assert "1/0" in shown
    unstreamed = kernel.run("%%px --no-stream\n1/0\n").error()
    assert unstreamed["ename"] == "CompositeError"
    assert all(f"[{e}:ZeroDivisionError]" in "\n".join(unstreamed["traceback"]) for e in ALL)
    single = kernel.run("%%px --targets 2\nraise ValueError('bad value')\n")
    assert "[2:ValueError]" in "\n".join(single.error()["traceback"])
    stderr = kernel.run("%%px --targets 1\nimport sys\nprint('oops', file=sys.stderr)")
    assert stderr.stream("stderr") == "[stderr:1] \noops\n"


def test_display_on_engines_reaches_the_notebook_as_rich_output(kernel: KernelSession) -> None:
    png = b"\x89PNG\r\n\x1a\n-not-really-an-image"
    cell = kernel.run(
        "%%px --targets 0,1 --local\n"
        "from IPython.display import HTML, Image, display\n"
        f"png = {png!r}\n"
        "display(HTML('<b>bold</b>'))\n"
        "display(Image(data=png, format='png'))\n"
        "HTML('<i>out</i>')\n"
    )
    assert cell.status == "ok", cell.summary()
    remote = [
        m for m in cell.messages if m["msg_type"] == "display_data" and "engine" in m["content"]["metadata"]
    ]
    html = [(m["content"]["metadata"]["engine"], m["content"]["data"].get("text/html")) for m in remote]
    assert (0, "<b>bold</b>") in html and (1, "<b>bold</b>") in html
    images = [m["content"]["data"]["image/png"] for m in remote if "image/png" in m["content"]["data"]]
    assert base64.b64encode(png).decode() in images
    outs = [text for engine, text in html if text and "<i>out</i>" in text]
    assert len(outs) == 2 and all("Out[" in text for text in outs)


def test_ipython_syntax_runs_on_the_engines(kernel: KernelSession) -> None:
    cell = kernel.run(
        "%%px --targets 0\n"
        "%time y = 1\n"
        "word = 'hi'\n"
        "!echo shell-says-$word\n"
        "listing = !echo captured\n"
        "listing\n"
    )
    assert cell.status == "ok", cell.summary()
    stdout = cell.stream()
    assert "Wall time" in stdout and "shell-says-hi" in stdout
    assert out_values(cell.plain()) == {0: "['captured']"}


def test_matplotlib_inline_figures_on_engines_reach_the_notebook(kernel: KernelSession) -> None:
    pytest.importorskip("matplotlib")
    cell = kernel.run(
        "%%px --targets 3\n%matplotlib inline\nimport matplotlib.pyplot as plt\n_ = plt.plot([1, 3, 2])\n"
    )
    assert cell.status == "ok", cell.summary()
    figures = [c for c in cell.of_type("display_data") if "image/png" in c["data"]]
    assert len(figures) == 1 and figures[0]["metadata"]["engine"] == 3
    assert base64.b64decode(figures[0]["data"]["image/png"]).startswith(b"\x89PNG")


def test_display_outputs_outside_ipython_prints_the_same_blocks(cluster7, capsys) -> None:  # type: ignore[no-untyped-def]
    ar = cluster7[1][:2].execute("print('said')\n40 + 2", silent=False, block=False)
    ar.get(timeout=30)
    capsys.readouterr()
    ar.display_outputs()
    counts = [meta["execution_count"] for meta in ar.metadata]
    expected = f"[stdout:0] \nsaid\n[stdout:1] \nsaid\nOut[0:{counts[0]}]: 42\nOut[1:{counts[1]}]: 42\n"
    assert capsys.readouterr().out == expected


def test_local_runs_here_too_and_out_keeps_the_result(kernel: KernelSession) -> None:
    cell = kernel.run("%%px --local -o kept_ar --targets 0,1\nboth = 'here and there'\n")
    assert cell.status == "ok"
    check = kernel.run("print(both, [r.data for r in kept_ar.get()], rc[:2]['both'])")
    assert check.stream() == "here and there [{}, {}] ['here and there', 'here and there']\n"


def test_group_outputs_engine_shows_each_engine_together(kernel: KernelSession) -> None:
    cell = kernel.run("%%px --targets 0,1 --no-stream --group-outputs=engine\nprint('said')\n'value'\n")
    shown = []
    for m in cell.messages:
        if m["msg_type"] == "stream":
            shown.append(m["content"]["text"])
        elif m["msg_type"] == "display_data":
            shown.append(m["content"]["data"]["text/plain"])
    assert shown[0] == "[stdout:0] \nsaid\n" and shown[2] == "[stdout:1] \nsaid\n"
    assert out_values([shown[1]]) == {0: "'value'"} and out_values([shown[3]]) == {1: "'value'"}
    assert len(shown) == 4


def test_activate_with_a_suffix_gives_a_second_set_of_magics(kernel: KernelSession) -> None:
    assert kernel.run("even = rc.activate(rc.ids[::2], suffix='_even')").status == "ok"
    assert "UsageError" in kernel.run("%pxresult_even").stream("stderr")
    cell = kernel.run("%px_even print('even')")
    assert stdout_blocks(cell.stream()) == {e: "even\n" for e in (0, 2, 4, 6)}
    cell = kernel.run("%%px_even\nos.getpid()")
    assert sorted(out_values(cell.plain())) == [0, 2, 4, 6]
    assert sorted(out_values(kernel.run("%px os.getpid()").plain())) == ALL


# --- ipyparallel's magics behaviour (issue 15) ------------------------------------------------


def test_ctrl_c_with_signal_on_interrupt_0_only_stops_waiting(kernel, cluster7) -> None:  # type: ignore[no-untyped-def]
    cell = kernel.submit(
        "%%px --targets 0 --signal-on-interrupt 0\nimport time\nprint('sleeping')\ntime.sleep(2)\n'finished'"
    )
    kernel.read_until(cell, lambda c: "sleeping" in c.stream())
    wait_until_busy(cluster7[1], [0])
    kernel.interrupt()
    kernel.finish(cell)
    assert cell.status == "ok", cell.summary()
    assert not cell.of_type("error")
    assert "Received Keyboard Interrupt. Not signalling the engines" in cell.stream("stderr")
    # The engine was not interrupted: its result comes in full.
    assert out_values(kernel.run("%pxresult").plain()) == {0: "'finished'"}


def test_activate_starts_from_the_default_magic_settings(kernel: KernelSession) -> None:
    try:
        assert kernel.run("%pxconfig --verbose --no-stream").status == "ok"
        assert "Parallel execution on engine(s)" in kernel.run("%px 1").stream()
        assert kernel.run("rc.activate()").status == "ok"
        cell = kernel.run("%px print('quiet')")
        assert "Parallel execution" not in cell.stream()
        assert "verbose=False" in kernel.run("%pxconfig").stream()
        assert "stream=True" in kernel.run("%pxconfig").stream()
    finally:
        kernel.run("%pxconfig --no-verbose --stream")


@pytest.mark.parametrize("grouping", ["engine", "order", "type"])
def test_no_stream_shows_each_stdout_block_before_its_output_blocks(
    kernel: KernelSession, grouping: str
) -> None:
    cell = kernel.run(
        f"%%px --targets 0,1 --no-stream --group-outputs={grouping}\n"
        "from IPython.display import HTML, display\n"
        "print('said')\n"
        "display(HTML('<b>shown</b>'))\n"
    )
    assert cell.status == "ok", cell.summary()
    shown = []
    for m in cell.messages:
        if m["msg_type"] == "stream":
            shown.extend(
                block.split(" ")[0] for block in m["content"]["text"].split("\n") if block.startswith("[")
            )
        elif m["msg_type"] == "display_data" and m["content"]["data"]["text/plain"].startswith("[output:"):
            shown.append(m["content"]["data"]["text/plain"])
    for e in (0, 1):
        assert shown.index(f"[stdout:{e}]") < shown.index(f"[output:{e}]"), shown
    if grouping == "engine":
        assert shown == ["[stdout:0]", "[output:0]", "[stdout:1]", "[output:1]"]
    else:
        assert shown == ["[stdout:0]", "[stdout:1]", "[output:0]", "[output:1]"]


def test_no_stream_writes_no_progress_bar(kernel: KernelSession) -> None:
    cell = kernel.run("%%px --no-stream --progress-after 0\nimport time\ntime.sleep(0.3)\nprint('done')\n")
    assert cell.status == "ok", cell.summary()
    assert cell.stream("stderr") == ""
    assert stdout_blocks(cell.stream()) == {e: "done\n" for e in ALL}
    streamed = kernel.run("%%px --targets 0 --progress-after 0\nimport time\ntime.sleep(0.3)\n")
    assert "%px" in streamed.stream("stderr")  # (streaming keeps its progress bar)
