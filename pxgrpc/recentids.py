"""A bounded memory of ids: the aborts of tasks not known yet, kept until the task comes."""

from __future__ import annotations

import collections


class RecentIds(collections.OrderedDict[str, None]):
    """The last `limit` ids added (older ones are forgotten); `take` says whether one is here
    and forgets it. Not locked: its owner guards it where threads share it."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def add(self, key: str) -> None:
        self[key] = None
        if len(self) > self.limit:
            self.popitem(last=False)

    def take(self, key: str) -> bool:
        """Whether `key` was here (it is not any more)."""
        return bool(self) and self.pop(key, 0) is None
