class WorkerError(Exception):
    """Base class of the worker's own failures."""


class ProfileError(WorkerError):
    """A model profile is invalid or cannot run on this hardware; the worker refuses to start."""


class EngineFailure(WorkerError):
    """The engine died: this process must exit and its in-flight requests be redelivered."""


class RequestRejected(WorkerError):
    """A request the engine cannot serve as asked (e.g. too long for the context)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # The request field at fault, when the engine names one.
        self.param = param


class Superseded(WorkerError):
    """The event log refused this attempt's event: since this attempt last looked, the request
    moved on (a newer attempt started, or it ended). This attempt publishes nothing more and
    neither acks nor hands back the request (it belongs to the newer delivery)."""
