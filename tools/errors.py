"""The one error type local tools raise for input a caller can fix."""


class ToolInputError(ValueError):
    """Raised when a tool's arguments are valid JSON but cannot be acted on.

    The message is written for the caller (often a model): it says what was wrong
    and what to send instead.
    """
