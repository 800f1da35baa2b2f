"""The one exception type the CLI turns into a single-line message and a non-zero exit code."""


class CalibkitError(Exception):
    """A problem with the user's input or environment; its message names the file and the fix."""
