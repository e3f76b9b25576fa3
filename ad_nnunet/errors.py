"""The one exception type for bad user input: its message names the case (or file) and the fix."""


class ADInputError(ValueError):
    """Raised for invalid datasets, split files or options. The message says what is wrong and how to fix it."""
