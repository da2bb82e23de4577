"""The one error type for mistakes a user can make (bad option, bad spec, missing data).

The CLI turns it into one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""


class SenetError(ValueError):
    """A user-caused error whose message names the field or path and what is allowed."""
