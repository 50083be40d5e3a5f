"""A request the handlers refuse, and how headers are read: shared by handlers/base.py and the
protocol parsers (handlers/oip.py), which base.py imports, so it lives below both."""

from __future__ import annotations


class RequestError(Exception):
    """A request the handler refuses, answered with `status` and a JSON body."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail

    def body(self, protocol: str = "native") -> dict[str, str]:
        """The Open Inference Protocol's error is one message (`{"error": "..."}`), which its
        clients show whole: there it starts with the same code as elsewhere."""
        if protocol.startswith("v2"):
            return {"error": f"{self.error}: {self.detail}"}
        return {"error": self.error, "detail": self.detail}


def bad_request(error: str, detail: str) -> RequestError:
    return RequestError(400, error, detail)


def unprocessable(error: str, detail: str) -> RequestError:
    """Well-formed but unusable input: wrong shape, wrong type, out of range."""
    return RequestError(422, error, detail)


def request_header(headers: dict | None, wanted: str) -> str | None:
    """A request header's value, whatever its case (TorchServe keeps header names as sent)."""
    for name, value in (headers or {}).items():
        if name.lower() == wanted and isinstance(value, str):
            return value
    return None
