"""The shared retry loop: what is retried, how long it waits, and what goes back to the caller."""

from __future__ import annotations

import httpx

from distillkit.http import MAX_DELAY_S, post_with_retries, retry_delay


def client_answering(*statuses, headers=None):
    seen = []

    def handler(request):
        seen.append(request)
        status = statuses[min(len(seen), len(statuses)) - 1]
        if status is None:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(status, json={"n": len(seen)}, headers=headers or {})

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def test_retryable_failures_are_retried_and_the_first_final_answer_returned():
    waits = []
    client, seen = client_answering(None, 503, 429, 200)
    r, last = post_with_retries(client, "http://x/v1/chat", {}, max_retries=5, backoff_s=1.0, wait=waits.append)
    assert r.status_code == 200 and r.json() == {"n": 4} and last == "" and len(waits) == 3
    assert all(0.5 * 2 ** i <= w <= 1.5 * 2 ** i for i, w in enumerate(waits))  # doubling, with jitter

    client, seen = client_answering(400)
    r, _ = post_with_retries(client, "http://x", {}, max_retries=5, backoff_s=1.0, wait=waits.append)
    assert r.status_code == 400 and len(seen) == 1  # a refusal goes back to the caller, not retried


def test_exhausted_retries_and_an_early_stop_return_no_response():
    client, seen = client_answering(500, headers={"retry-after": "7"})
    waits = []
    r, last = post_with_retries(client, "http://x", {}, max_retries=2, backoff_s=1.0, wait=waits.append)
    assert r is None and last.startswith("HTTP 500") and len(seen) == 3 and waits == [7.0, 7.0]
    client, seen = client_answering(500)
    r, _ = post_with_retries(client, "http://x", {}, max_retries=5, backoff_s=0.0, wait=lambda s: None,
                             before_attempt=lambda attempt: attempt < 2)
    assert r is None and len(seen) == 2


def test_delays_are_capped():
    assert retry_delay(20, 1.0) == MAX_DELAY_S and retry_delay(0, 1.0, retry_after=3600) == MAX_DELAY_S
