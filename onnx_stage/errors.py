class StageError(Exception):
    """A failure the user can act on: the message is one line that names the cause and the fix."""
