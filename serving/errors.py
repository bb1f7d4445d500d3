"""Errors that know their status, as TF Serving's `absl::Status` codes do.

Every layer below the transports raises a `ServingError` subclass; the REST app
renders it as `{"error": message}` with `http_status`, the gRPC servicer aborts
with `grpc_code` and the same message. Nothing else decides status codes.

The code -> HTTP mapping is TF Serving's `ToHTTPStatusCode`
(tensorflow_serving/model_servers/http_server.cc).

Layer: bottom. Imports grpc only (for the status codes).
"""
from __future__ import annotations

import enum

import grpc


class Code(enum.Enum):
    """tensorflow.error.Code / absl::StatusCode names, with their HTTP and gRPC equivalents."""

    OK = (200, grpc.StatusCode.OK)
    CANCELLED = (499, grpc.StatusCode.CANCELLED)
    UNKNOWN = (500, grpc.StatusCode.UNKNOWN)
    INVALID_ARGUMENT = (400, grpc.StatusCode.INVALID_ARGUMENT)
    DEADLINE_EXCEEDED = (504, grpc.StatusCode.DEADLINE_EXCEEDED)
    NOT_FOUND = (404, grpc.StatusCode.NOT_FOUND)
    ALREADY_EXISTS = (409, grpc.StatusCode.ALREADY_EXISTS)
    PERMISSION_DENIED = (403, grpc.StatusCode.PERMISSION_DENIED)
    RESOURCE_EXHAUSTED = (429, grpc.StatusCode.RESOURCE_EXHAUSTED)
    FAILED_PRECONDITION = (400, grpc.StatusCode.FAILED_PRECONDITION)
    ABORTED = (409, grpc.StatusCode.ABORTED)
    OUT_OF_RANGE = (400, grpc.StatusCode.OUT_OF_RANGE)
    UNIMPLEMENTED = (501, grpc.StatusCode.UNIMPLEMENTED)
    INTERNAL = (500, grpc.StatusCode.INTERNAL)
    UNAVAILABLE = (503, grpc.StatusCode.UNAVAILABLE)
    DATA_LOSS = (500, grpc.StatusCode.DATA_LOSS)
    UNAUTHENTICATED = (401, grpc.StatusCode.UNAUTHENTICATED)

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return self.value[1]


# What a client hears about a bug (an exception that is no ServingError): the exception and
# its traceback go to the server log only.
INTERNAL_MESSAGE = "Internal server error; the server log has the details"


class ServingError(Exception):
    """An error with a status. `message` is what clients see, verbatim."""

    code: Code = Code.UNKNOWN

    def __init__(self, message: str, *, http_status: int | None = None):
        super().__init__(message)
        self.message = message
        self._http_status = http_status

    @property
    def http_status(self) -> int:
        return self._http_status or self.code.http_status

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return self.code.grpc_code

    def to_json(self) -> dict:
        """TF Serving's `MakeJsonFromStatus`: the message only, no code prefix."""
        return {"error": self.message}


class InvalidArgument(ServingError):
    code = Code.INVALID_ARGUMENT


class NotFound(ServingError):
    code = Code.NOT_FOUND


class FailedPrecondition(ServingError):
    code = Code.FAILED_PRECONDITION


class ResourceExhausted(ServingError):
    code = Code.RESOURCE_EXHAUSTED


class Unavailable(ServingError):
    code = Code.UNAVAILABLE


class DeadlineExceeded(ServingError):
    code = Code.DEADLINE_EXCEEDED


class Unimplemented(ServingError):
    code = Code.UNIMPLEMENTED


class Internal(ServingError):
    code = Code.INTERNAL


class Unknown(ServingError):
    code = Code.UNKNOWN


class RequestTooLarge(ServingError):
    """A request over signflow's size limits (TF Serving has none).

    gRPC reports RESOURCE_EXHAUSTED, as grpc itself does for an oversized
    message; REST answers 413, which says more than TF Serving's 429 would.
    """

    code = Code.RESOURCE_EXHAUSTED

    def __init__(self, message: str):
        super().__init__(message, http_status=413)


_BY_NAME = {cls.code.name: cls for cls in (
    InvalidArgument, NotFound, FailedPrecondition, ResourceExhausted, Unavailable,
    DeadlineExceeded, Unimplemented, Internal, Unknown,
)}


def from_code_name(name: str, message: str) -> ServingError:
    """The error for a tensorflow.error.Code name (e.g. from a TF OpError)."""
    cls = _BY_NAME.get(name)
    if cls is None:
        err = ServingError(message)
        err.code = Code[name] if name in Code.__members__ else Code.UNKNOWN
        return err
    return cls(message)


# TF Serving's ToGRPCStatus cuts long messages (grpc_status_util.cc).
_GRPC_MESSAGE_LIMIT = 1024


def grpc_message(message: str) -> str:
    if len(message) > _GRPC_MESSAGE_LIMIT:
        return message[:_GRPC_MESSAGE_LIMIT] + "...TRUNCATED"
    return message
