"""The one exception type for problems the user can fix (bad input, missing weights, bad paths)."""


class RemoverError(Exception):
    """A user-facing problem: the CLI prints its message as one line and exits non-zero."""
