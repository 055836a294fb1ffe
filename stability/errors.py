"""The one exception type for bad user input: the CLI prints it on one line and exits 2."""


class ConfigError(ValueError):
    """Bad input. The message names the source (file), the field and the allowed values."""

    def __init__(self, message: str, source: str | None = None):
        super().__init__(f"{source}: {message}" if source else message)
