"""Functions the tests run on engines, shared by several test modules.

Engines cannot import the tests: this module is pickled by value, so its functions travel whole.
"""

from __future__ import annotations

import sys

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def wait_for_file(path: str) -> str:
    """(On an engine.) Block until `path` exists: the test decides when the task ends."""
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return path
