"""The error a command reports as one line (`cascade-rag: error: ...`, exit status 1): its own home, so that the
CLI and the modules it runs (run as `python -m cascade_rag.rag.cli` too) raise and catch one class."""


class CLIError(Exception):
    pass
