"""Engine errors: each carries a stable `code` a client can act on.

The API maps `InputError` to 4xx and a worker records `code` and message on a failed job.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class. `code` is stable and machine-readable; the message is for people."""

    code = "engine_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class InputError(EngineError):
    """The user's model, data or spec cannot be used (a 4xx at upload/submit time)."""

    code = "invalid_input"


class InvalidModel(InputError):
    code = "invalid_model"


class InvalidDataset(InputError):
    code = "invalid_dataset"


class IncompatibleData(InputError):
    """The dataset's arrays do not fit the model's inputs, or the task's labels are missing."""

    code = "incompatible_data"


class UnsupportedModel(EngineError):
    """A valid model that a step cannot handle (e.g. an op the quantizer rejects)."""

    code = "unsupported_model"


class StepFailed(EngineError):
    code = "step_failed"


class JobCancelled(EngineError):
    code = "cancelled"


def short_reason(exc: BaseException, limit: int = 500) -> str:
    """The first line of an exception's message, for error messages people read.

    Wrapped library errors (ONNX Runtime's especially) can span pages; the first line
    names the failing op or check, and the full chain stays on `__cause__` for logs.
    """
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]


class RuntimeUnavailable(EngineError):
    """A runtime or device this machine does not offer (not installed, no GPU)."""

    code = "runtime_unavailable"


class RuntimeUnsupportedModel(UnsupportedModel):
    """A valid ONNX model that a runtime cannot convert, compile or run faithfully."""

    code = "runtime_unsupported_model"
