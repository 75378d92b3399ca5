"""Errors a user can fix. vsd.pipeline (and each command-line tool) prints them as one line and exits non-zero."""


class UserError(RuntimeError):
    """Bad input (config value, file, model id): the message is one line that names it."""


class ConfigError(UserError):
    """A config value that composes but is invalid: a schema's range or choice check, or a key no schema
    declares. ``key`` is the full config key; ``str()`` is one line that starts with it."""

    def __init__(self, key: str, msg: str):
        self.key = key
        super().__init__(f"{key}: {msg}")
