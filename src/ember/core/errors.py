"""Errors a user can cause, each with the HTTP status it maps to and a message that says what to do."""


class EmberError(Exception):
    status = 500

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(EmberError):
    status = 400


class NotFound(EmberError):
    status = 404


class TooLarge(EmberError):
    status = 413


class Busy(EmberError):
    """The server is at its queue limit; the client should retry after `retry_after` seconds."""

    status = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


def model_not_found(name: str) -> NotFound:
    return NotFound(f"model '{name}' not found, try pulling it first: ember pull {name}")


class DiskFull(EmberError):
    status = 507


def disk_error(error: OSError) -> EmberError | None:
    """A full disk (or quota) as an error that says so; None for other OS errors. Writes are atomic, so what was
    being written is simply not there."""
    import errno

    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {error.filename}" if error.filename else ""
        return DiskFull(f"the disk is full{where}: nothing was changed; free some space (`ember rm` removes models, "
                        "EMBER_MODELS can put them on another disk) and try again")
    return None
