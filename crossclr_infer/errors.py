"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class CrossclrError(ValueError):
    """Bad input from the user (a file, a flag, a config): the message says what is wrong and what to do."""
