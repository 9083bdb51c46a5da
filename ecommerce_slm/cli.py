"""The one way every stage and tool ends: a user's mistake is one line on stderr and exit 1.

    @stage_main("merge")
    def main() -> str:
        ...
        return "what was done -> where"     # printed as `merge: ...`

A ProjectError (bad params, a missing input, a file that breaks the row contract, a failed check) or a
FileNotFoundError becomes `merge: error: <message>`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


class ProjectError(Exception):
    """An error the user can fix; its message names the file, field or parameter and what was expected."""


def stage_main(name: str) -> Callable[[Callable[..., str | None]], Callable[..., int]]:
    def wrap(body: Callable[..., str | None]) -> Callable[..., int]:
        @functools.wraps(body)
        def main(*args, **kwargs) -> int:
            try:
                message = body(*args, **kwargs)
            except (ProjectError, FileNotFoundError) as err:
                print(f"{name}: error: {err}", file=sys.stderr)
                return 1
            if message:
                print(f"{name}: {message}", flush=True)
            return 0

        return main

    return wrap
