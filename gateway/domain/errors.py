"""The API's error envelope: one table from failure to HTTP answer (seed 003).

Every error body carries the keys and values the seed shows for its status, plus
``statusCode``, ``error`` and ``requestId``::

    ApiError
     ├── BadRequest            400  message: str | list[str]
     ├── Unauthorized          401
     ├── Forbidden             403
     ├── NotFound              404
     ├── MethodNotAllowed      405
 ├── RequestTimeout        408  the request was not received within the read timeouts
     ├── Conflict              409  details, optional Retry-After / sessionId
     ├── PayloadTooLarge       413
     ├── UnsupportedMediaType  415
     ├── ExpectationFailed     417  an ``Expect`` other than 100-continue
     ├── Unprocessable         422  code: IDEMPOTENCY_KEY_MISMATCH | NO_AVAILABLE_PROVIDER |
     │                              IDEMPOTENCY_KEY_EXPIRED
 ├── TooManyRequests       429  a rate limit; Retry-After says when to come back
     ├── InternalError         500
     ├── BadGateway            502  every provider failed
     ├── ServiceUnavailable    503  a dependency (the store) is down, or every provider that could
 │                              take the request is down (circuit open); Retry-After
     └── GatewayTimeout        504  the request deadline passed with nothing created
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "BadGateway",
    "BadRequest",
    "Conflict",
    "ExpectationFailed",
    "Forbidden",
    "GatewayTimeout",
    "InternalError",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "Unprocessable",
    "UnsupportedMediaType",
]


class ApiError(Exception):
    """An error answered to the client in the envelope of seed 003."""

    status: int = 500
    error: str = "Internal Server Error"
    message: str | list[str] = "Internal server error"
    #: ``code`` of the seed body; the seed uses the integer status for most errors.
    code: int | str | None = None

    def __init__(
        self,
        message: str | list[str] | None = None,
        *,
        code: int | str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if message is not None:
            self.message = message
        if code is not None:
            self.code = code
        self.details = details
        self.headers = headers or {}
        self.extra = extra or {}
        super().__init__(self.message if isinstance(self.message, str) else "; ".join(self.message))

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON envelope for this error."""
        out: dict[str, Any] = {"error": self.error, "message": self.message}
        if self.code is not None:
            out["code"] = self.code
        out["statusCode"] = self.status
        if self.details is not None:
            out["details"] = self.details
        out.update(self.extra)
        out["requestId"] = request_id
        return out


class BadRequest(ApiError):
    status, error = 400, "Bad Request"
    message = "Bad request"


class Unauthorized(ApiError):
    status, error, code = 401, "Unauthorized", 401
    message = "Authentication required. Please provide a valid API token"


class Forbidden(ApiError):
    status, error, code = 403, "Forbidden", 403
    message = "The API token does not grant the scope this operation needs"


class NotFound(ApiError):
    status, error, code = 404, "Not Found", 404
    message = "Resource not found"


class MethodNotAllowed(ApiError):
    status, error, code = 405, "Method Not Allowed", 405
    message = "Method not allowed"


class RequestTimeout(ApiError):
    status, error, code = 408, "Request Timeout", 408
    message = "The request was not received in time"


class Conflict(ApiError):
    status, error, code = 409, "Conflict", 409
    message = "The request conflicts with the current state of the resource"


class PayloadTooLarge(ApiError):
    status, error, code = 413, "Payload Too Large", 413
    message = "Request body too large"


class UnsupportedMediaType(ApiError):
    status, error, code = 415, "Unsupported Media Type", 415
    message = "Content-Type must be application/json"


class ExpectationFailed(ApiError):
    status, error, code = 417, "Expectation Failed", 417
    message = "Only 'Expect: 100-continue' is supported"


class Unprocessable(ApiError):
    status, error = 422, "Unprocessable Entity"

    @classmethod
    def idempotency_mismatch(cls) -> Unprocessable:
        return cls(
            "This idempotency key was already used with different request parameters",
            code="IDEMPOTENCY_KEY_MISMATCH",
        )

    @classmethod
    def no_available_provider(cls, details: Any) -> Unprocessable:
        return cls(
            "No eligible providers found for the given request parameters",
            code="NO_AVAILABLE_PROVIDER",
            details=details,
        )


class TooManyRequests(ApiError):
    status, error, code = 429, "Too Many Requests", 429
    message = "Too many requests. Please retry after the time given in Retry-After"


class InternalError(ApiError):
    status, error = 500, "Internal Server Error"
    message = "Internal server error"


class BadGateway(ApiError):
    status, error, code = 502, "Error", 502
    message = "Service temporarily unavailable."


class ServiceUnavailable(ApiError):
    status, error, code = 503, "Service Unavailable", 503
    message = "The service is temporarily unavailable. Please try again later"

    @classmethod
    def store_down(cls) -> ServiceUnavailable:
        """The gateway's store cannot be reached: nothing was done, retry shortly."""
        return cls(headers={"Retry-After": "1"})

    @classmethod
    def providers_down(cls, details: Any, retry_after_s: int) -> ServiceUnavailable:
        """Every provider that could take the request is down (circuit open) right now."""
        return cls(
            details=details,
            headers={"Retry-After": str(max(1, retry_after_s))},
            extra={"reason": "PROVIDERS_UNAVAILABLE"},
        )


class GatewayTimeout(ApiError):
    status, error, code = 504, "Error", 504
    message = "Request timed out."
