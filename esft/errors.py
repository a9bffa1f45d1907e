"""The one exception type users see.

Every refusal that a user can fix (bad config value, unknown task, missing file, corrupt checkpoint) raises
`EsftError` with a message that names the problem and the fix. The CLI turns it into one line on stderr and
exit code 2; anything else is a bug and keeps its traceback.
"""


class EsftError(Exception):
    """A problem with the user's input or environment, explained in one line."""
