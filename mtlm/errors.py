"""The mistakes a user can make, as exceptions the `mtlm` command reports on one line instead of a traceback."""


class UsageError(ValueError):
    """A flag or run-config value that cannot work, named with the value given and the fix. The CLI exits with 2,
    as argparse does for a malformed command line."""
