"""One exception type for user mistakes: the CLI prints its message on one line and exits 1."""


class NormfastError(Exception):
    """A problem the user can fix (bad input, missing file, unknown name). No traceback."""
