"""The seed notebook (an ipyparallel tutorial) on pxgrpc: `make demo`, or `python scripts/demo.py`.

Starts a local cluster of 7 engines, runs the notebook's cells one by one in a real IPython
shell (so `%%px` works as in Jupyter), printing each cell and what it shows, and stops the
cluster at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from IPython.core.interactiveshell import InteractiveShell

import pxgrpc

#: The code cells of the seed notebook, with `import pxgrpc as ipp` for ipyparallel.
SEED_CELLS = [
    "import pxgrpc as ipp # import the client\nrc = ipp.Client()",
    "rc.ids # list the ids of the engine the client can communicate with",
    "dv = rc[:]\ndv",
    "%%px\nimport os\nos.getpid()",
    "%%px\nfoo = 'bar on pid {}'.format(os.getpid())",
    "%%px\nfoo",
    "dv['foo']",
    "# now we can overwrite its value\ndv['foo'] = 'bar'\ndv['foo']",
    "# start with a list of ids to work on\nuser_ids = list(range(1000))\n"
    "dv.scatter('user_id_chunk', user_ids)",
    "# Now we have a variable on each engine that holds an equal amount of the original list.\n"
    "dv.scatter('user_id_chunk', user_ids).get()",
    '%%px\nprint("Len", len(user_id_chunk))\nprint("Max", max(user_id_chunk))',
    '%%px --local\ndef the_most_interesting_transformation_ever(user_id):\n    """\n'
    '    This function is really interesting\n    """\n    return "ID:{}".format(user_id * 3)',
    "the_most_interesting_transformation_ever(1)",
    "%%px\ntransformed_user_ids = list(map(the_most_interesting_transformation_ever, user_id_chunk))",
    "# Now we have 4 separate list of transformed ids. \n"
    "# We want to stitch the disparate lists into one list on our local notebook. \n"
    "# gather is used for that.\n"
    "all_transformed_user_ids = dv.gather('transformed_user_ids').get()\n"
    "print(len(all_transformed_user_ids))\n"
    "print(all_transformed_user_ids[0:10])",
]


def run_cells(shell: InteractiveShell, cells: list[str]) -> bool:
    """Run the cells as a notebook would, showing each; False if one of them failed."""
    ok = True
    for number, cell in enumerate(cells, start=1):
        print(f"\nIn [{number}]:\n{cell}\n", flush=True)
        result = shell.run_cell(cell, store_history=True)
        sys.stdout.flush()
        sys.stderr.flush()
        ok = ok and result.success
    return ok


def main(argv: list[str] | None = None) -> int:
    """Start 7 engines, run the seed notebook against them, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--engines", type=int, default=7, help="how many engines (the seed used 7)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cluster = pxgrpc.Cluster(n=args.engines)
    try:
        cluster.start_and_connect_sync(timeout=60)
        print(f"Started a controller and {args.engines} engines in {time.perf_counter() - started:.2f} s")
        # The notebook's `ipp.Client()` finds this cluster like it finds a user's: by its file.
        os.environ["PXGRPC_CONNECTION_FILE"] = str(cluster.connection_file)
        shell = InteractiveShell.instance(colors="NoColor")
        ok = run_cells(shell, SEED_CELLS)
    finally:
        cluster.stop_cluster_sync()
    elapsed = time.perf_counter() - started
    print(f"\n{'Done' if ok else 'FAILED'}: the cluster is stopped ({elapsed:.1f} s in all).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
