"""A small REST client for a Label Studio server: token authentication, retries with backoff, clear errors.

Two kinds of token are accepted (Label Studio 1.x): a personal access token (a JWT refresh token, three
dot-separated parts), exchanged at ``/api/token/refresh/`` for a short-lived access token sent as ``Bearer``
and refreshed when it expires; or a legacy API token sent as ``Token <token>`` (only where the server enables
legacy tokens). The token is never written into messages, ``repr`` or logs.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

TRANSIENT_STATUS = (429, 500, 502, 503, 504)


class LabelStudioError(RuntimeError):
    """A request to Label Studio failed: the server is unreachable, refused the token, or answered an error."""


class LabelStudioClient:
    """Authenticated JSON requests to one Label Studio server.

    Args:
        url: the server's base URL, e.g. ``http://localhost:8080``.
        token: a personal access token or a legacy API token.
        timeout: seconds to wait for the server on each request.
        retries: how often a failed connection, a timeout or a 429/5xx answer is retried (with exponential
            backoff) before the request fails. Requests that create things (``POST``) are retried only when
            the connection failed before anything was sent; the caller makes them idempotent.
        backoff: the first retry waits ``backoff`` seconds, each later one twice as long.
    """

    def __init__(self, url: str, token: str, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"Expected `url` to be an http(s) URL of a Label Studio server, but got {url!r}.")
        if not isinstance(token, str) or not token.strip():
            raise ValueError(
                "Expected a Label Studio API token (`token`, or the environment variable LABEL_STUDIO_API_KEY), "
                "but got none."
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token = token.strip()
        self._personal = self._token.count(".") == 2
        self._access: str | None = None
        self._session = requests.Session()
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            backoff_factor=backoff,
            status_forcelist=TRANSIENT_STATUS,
            allowed_methods=frozenset({"GET", "PUT", "PATCH", "DELETE", "HEAD"}),
            raise_on_status=False,
        )
        self._session.mount("http://", HTTPAdapter(max_retries=retry))
        self._session.mount("https://", HTTPAdapter(max_retries=retry))

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r}, token=<hidden>)"

    def _authorization(self, refresh: bool = False) -> str:
        if not self._personal:
            return f"Token {self._token}"
        if self._access is None or refresh:
            answer = self._send("POST", "/api/token/refresh/", json={"refresh": self._token}, auth=None)
            self._access = answer["access"]
        return f"Bearer {self._access}"

    def request(self, method: str, path: str, *, params: dict | None = None, json: Any = None) -> Any:
        """``method path`` with the token; returns the decoded JSON answer (None when empty).

        ``params`` go into the query string, ``json`` is sent as the JSON body.

        Raises:
            LabelStudioError: naming the URL and what failed (unreachable, timeout, 401/403, other status).
        """
        try:
            return self._send(method, path, params=params, json=json, auth=self._authorization())
        except _Unauthorised:
            if not self._personal:
                raise self._refused(method, path, 401) from None
            try:  # the access token expired: refresh it once
                return self._send(method, path, params=params, json=json, auth=self._authorization(refresh=True))
            except _Unauthorised:
                raise self._refused(method, path, 401) from None

    def _refused(self, method: str, path: str, status: int) -> LabelStudioError:
        kind = "personal access token" if self._personal else "legacy API token"
        return LabelStudioError(
            f"Label Studio at {self.url} refused the {kind} ({status}) for {method} {path}. Check the token "
            "(Account & Settings > Personal Access Token); a legacy token works only where the organisation "
            "enables legacy tokens."
        )

    def _send(self, method: str, path: str, *, auth: str | None, params: dict | None = None, json: Any = None) -> Any:
        headers = {"Authorization": auth} if auth is not None else {}
        where = f"{self.url}{path}"
        try:
            response = self._session.request(
                method, where, params=params, json=json, headers=headers, timeout=self.timeout
            )
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as error:
            cause = getattr(error.args[0], "reason", error) if error.args else error
            if isinstance(error, requests.exceptions.Timeout) or isinstance(cause, TimeoutError | ReadTimeoutError):
                raise LabelStudioError(
                    f"Label Studio at {self.url} did not answer {method} {path} within {self.timeout:g} s "
                    "(after retries)."
                ) from None
            reason = type(cause).__name__
            raise LabelStudioError(
                f"Could not reach Label Studio at {self.url} ({method} {path}: {reason}). Is the server running "
                "and the URL right?"
            ) from None
        except requests.exceptions.RequestException as error:
            raise LabelStudioError(f"Request {method} {path} to Label Studio at {self.url} failed: {error}") from None
        if response.status_code == 401 and auth is not None:
            raise _Unauthorised
        if response.status_code in (401, 403):
            raise self._refused(method, path, response.status_code)
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio at {self.url} answered {response.status_code} to {method} {path}: {response.text[:300]}",
            )
        return response.json() if response.content else None


class _Unauthorised(Exception):
    pass
