"""Errors a user can fix. run.py prints them as one line and exits non-zero."""


class UserError(RuntimeError):
    """Bad input (config value, file, model id): the message is one line that names it."""
