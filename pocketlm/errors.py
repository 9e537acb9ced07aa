"""The one exception type pocketlm raises for problems the user can fix."""


class UsageError(Exception):
    """Bad input at the edge of pocketlm: the message names the problem and the fix.

    Command-line entry points print it as one line and exit with status 2.
    """
