"""JSON POSTs to an OpenAI-compatible endpoint with retries: shared by the teacher backend and the judge.

Timeouts, connection errors, 408/409/429 and 5xx are retried with exponential backoff and jitter
(x0.5-1.5 of `backoff_s`, doubling each retry, capped at 60 s; a Retry-After header wins). Any other
status ends the loop and goes back to the caller, which knows what a refusal means for it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_DELAY_S = 60.0


def client(api_key: str | None, timeout_s: float, max_concurrency: int):
    """An httpx.Client for an OpenAI-compatible server: bearer key (when given), timeout, bounded connections."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(timeout=timeout_s, headers=headers, limits=httpx.Limits(max_connections=max_concurrency))


def retry_delay(attempt: int, backoff_s: float, retry_after: float | None = None) -> float:
    """Seconds to wait before retry `attempt + 1`."""
    delay = retry_after if retry_after is not None else backoff_s * 2 ** attempt * (0.5 + random.random())
    return min(delay, MAX_DELAY_S)


def post_with_retries(client, url: str, body: dict[str, Any], *, max_retries: int, backoff_s: float,
                      what: str = "request", wait: Callable[[float], Any] = time.sleep,
                      before_attempt: Callable[[int], bool] | None = None):
    """POST `body` to `url` with `client` (an httpx.Client): returns (response, last_error).

    The response is the first one whose status is not retried (a success, or a refusal for the caller
    to read); it is None when every attempt failed or `before_attempt(attempt)` returned False, and
    `last_error` then says what failed last. `wait(seconds)` sleeps between attempts (a
    threading.Event's `wait` lets another thread cut the wait short).
    """
    import httpx

    last = ""
    for attempt in range(max_retries + 1):
        if before_attempt is not None and not before_attempt(attempt):
            return None, last
        retry_after = None
        try:
            r = client.post(url, json=body)
        except httpx.TransportError as e:  # connect/read timeouts, refused, reset
            last = f"{type(e).__name__}: {e}"
        else:
            if r.status_code not in RETRY_STATUS:
                return r, ""
            last = f"HTTP {r.status_code}: {r.text[:300]}"
            try:
                retry_after = float(r.headers.get("retry-after", ""))
            except ValueError:
                pass
        if attempt < max_retries:
            delay = retry_delay(attempt, backoff_s, retry_after)
            log.warning("%s to %s failed (%s); retry %d/%d in %.1fs", what, url, last, attempt + 1,
                        max_retries, delay)
            wait(delay)
    return None, last


def hub_offline(*names: str) -> bool:
    """One of the offline switches `names` is set (default: HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, what the model
    loaders read): the user asked for the local cache only."""
    import os

    return any(os.environ.get(k, "0") not in ("0", "", "false", "False")
               for k in names or ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


_HUB_PROBE: dict[str, str | None] = {}


def hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the Hugging Face Hub cannot be reached from here (None when it answers with any HTTP status).

    One HEAD request through huggingface_hub's own session (its proxy and endpoint settings), once per process:
    without it, each file a loader asks for is retried with backoff, ~25 s per file before a user learns that
    the machine is offline."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    endpoint = constants.ENDPOINT
    if endpoint not in _HUB_PROBE:
        from distillkit.faults import network_reason

        try:
            get_session().head(endpoint, timeout=timeout_s)
            _HUB_PROBE[endpoint] = None
        except Exception as e:  # noqa: BLE001 - anything that is not a network failure is reported as is
            reason = network_reason(e)
            _HUB_PROBE[endpoint] = f"{endpoint}: {reason[0] if reason else f'{type(e).__name__}: {e}'}"
    return _HUB_PROBE[endpoint]
