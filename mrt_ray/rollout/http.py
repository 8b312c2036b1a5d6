"""The HTTP client of a served model (`openai_engine`): one keep-alive connection pool, at most `max_concurrency`
requests in flight, a timeout per request, and retries with exponential backoff.

Retried: HTTP 429 and 5xx, timeouts and lost or refused connections, up to `max_retries` times after the first
attempt, waiting backoff_s * 2**k before retry k + 1 (longer when a 429/503 says Retry-After). Not retried: any other
4xx (a bad request stays bad); its error names the server's message. An attempt that timed out is abandoned (its
connection closed, so vLLM aborts it) and never read: a request yields exactly one answer, and `map` places answers
by input position, so none is lost or counted twice. The API key travels only in this client's headers: it is never
in a message, a log line or a returned object.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import httpx

from mrt_ray.config import EndpointConfig

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
NOTICE_EVERY_S = 10.0  # at most one console line per this many seconds about retries


class EndpointError(ConnectionError):
    """A served model that cannot be reached, or that refuses a request: the message is the whole story (the CLI
    prints it as one line). `status`: the HTTP status of a refusal (None: no answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class Counts:
    requests: int = 0  # logical requests answered (each once, whatever its attempts)
    attempts: int = 0  # HTTP attempts made
    retries: int = 0  # attempts after a retryable failure


class HTTPClient:
    def __init__(self, base_url: str, ec: EndpointConfig):
        self.base = base_url.rstrip("/")
        self.ec = ec
        key = os.environ.get(ec.api_key_env, "") if ec.api_key_env else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(ec.timeout_s),
                                 limits=httpx.Limits(max_connections=ec.max_concurrency,
                                                     max_keepalive_connections=ec.max_concurrency))
        self.pool = ThreadPoolExecutor(max_workers=ec.max_concurrency, thread_name_prefix="mrt-http")
        self.counts = Counts()
        self._lock = threading.Lock()
        self._noticed = -NOTICE_EVERY_S

    def url(self, path: str) -> str:
        """`path` under the base URL; a path starting with '/' is under the server's root, the base URL without its
        trailing /v1 (vLLM's /tokenize and /detokenize)."""
        if path.startswith("/"):
            return self.base.removesuffix("/v1") + path
        return f"{self.base}/{path}"

    def request(self, method: str, path: str, body: dict | None = None, retries: int | None = None) -> Any:
        """The JSON answer of one request, retried as the module docstring says (`retries` overrides max_retries).
        A body's `request_id` gets the attempt number appended: the server tells the attempts apart, so aborting an
        abandoned attempt never touches its retry."""
        retries = self.ec.max_retries if retries is None else retries
        url = self.url(path)
        for attempt in range(retries + 1):
            with self._lock:
                self.counts.attempts += 1
                self.counts.retries += attempt > 0
            sent = {**body, "request_id": f"{body['request_id']}.{attempt}"} if body and "request_id" in body else body
            try:
                r = self.http.request(method, url, json=sent)
            except httpx.TransportError as e:  # refused, reset, timed out, DNS
                cause, wait = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__, 0.0
            else:
                if r.status_code < 400:
                    with self._lock:
                        self.counts.requests += 1
                    try:
                        return r.json()
                    except ValueError:
                        raise EndpointError(f"{url} answered {r.status_code} with no JSON body "
                                            f"({r.text[:120]!r}); is this an OpenAI-compatible server?") from None
                cause, wait = f"HTTP {r.status_code} {_message(r)}", _retry_after(r)
                if r.status_code not in RETRY_STATUS:
                    raise EndpointError(f"{method} {url} was refused: {cause}", r.status_code)
            if attempt == retries:
                raise EndpointError(f"{method} {url} failed after {attempt + 1} attempt(s): {cause}")
            delay = max(self.ec.backoff_s * 2 ** attempt, wait)
            self._notice(f"mrt-ray: {self.base}: {cause}; retrying in {delay:.3g} s "
                         f"(attempt {attempt + 2} of {retries + 1})")
            time.sleep(delay)
        raise AssertionError("unreachable")

    def post(self, path: str, body: dict) -> Any:
        return self.request("POST", path, body)

    def map(self, fn: Callable[[Any], Any], items: Sequence) -> list:
        """[fn(x) for x in items], at most max_concurrency at once, results by position. On a failure the calls not
        yet started are dropped and the first failure is raised once the calls in flight have ended (nothing keeps
        running behind the caller's back)."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        futures = [self.pool.submit(fn, x) for x in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            wait(futures)
            raise

    def _notice(self, line: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._noticed < NOTICE_EVERY_S:
                return
            self._noticed = now
        print(line, flush=True)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()


def _message(r: httpx.Response) -> str:
    """The server's error message (OpenAI shape {"error": {"message": ...}}, vLLM's too), else the start of the body."""
    try:
        body = r.json()
    except ValueError:
        return r.reason_phrase or r.text[:200]
    err = body.get("error", body) if isinstance(body, dict) else body
    msg = err.get("message") if isinstance(err, dict) else err
    return str(msg if msg else body)[:300]


def _retry_after(r: httpx.Response) -> float:
    try:
        return max(0.0, float(r.headers.get("retry-after", 0)))
    except ValueError:  # an HTTP date: use the exponential backoff
        return 0.0
