"""Fault injection for the crash-safety tests: CASCADE_RAG_CRASH_AT=name:n makes the process exit at the n-th pass
of the crash point `name`. Read once, when a RAG is made; the ingestion calls the hook it was given."""
import os
from typing import Callable

CrashHook = Callable[[str], None]


def no_crash(name: str) -> None:
    pass


def crash_hook_from_env(environ=os.environ) -> CrashHook:
    spec = environ.get("CASCADE_RAG_CRASH_AT", "")
    if not spec:
        return no_crash
    target, _, count = spec.partition(":")
    remaining = [int(count or 1)]

    def hook(name: str) -> None:
        if name == target:
            remaining[0] -= 1
            if remaining[0] <= 0:
                os._exit(137)
    return hook
