"""The HTTP backend's transport against a scripted local server (127.0.0.1): retries, refusals, parsing."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from distillkit.config import SamplingConfig
from distillkit.engines.base import GenRequest
from distillkit.engines.openai_http import EndpointError, OpenAIBackend
from distillkit.errors import DistillkitError


def _choice(index, ids, text):
    content = [{"token": f"token_id:{t}", "logprob": -0.1,
                "top_logprobs": [{"token": f"token_id:{t + 1}", "logprob": -2.0},
                                 {"token": f"token_id:{t}", "logprob": -0.1}]} for t in ids]
    return {"index": index, "message": {"role": "assistant", "content": text},
            "logprobs": {"content": content}, "finish_reason": "stop"}


class Script:
    """Status codes to answer with, in order; then 200 with a fixed completion."""

    def __init__(self, statuses, token_ids=True):
        self.statuses = list(statuses)
        self.bodies = []
        self.token_ids = token_ids


@pytest.fixture
def scripted():
    holder = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, status, obj, headers=()):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, {"data": [{"id": "m"}]})

        def do_POST(self):
            script = holder["script"]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.bodies.append(body)
            if script.statuses:
                status = script.statuses.pop(0)
                return self._send(status, {"error": {"message": f"scripted {status}"}}, [("Retry-After", "0")])
            choices = [_choice(i, [10 + i, 11, 2], f"ans{i}-{body.get('seed')}") for i in range(body["n"])]
            if not script.token_ids:
                for c in choices:
                    for t in c["logprobs"]["content"]:
                        t["token"] = "x"
            self._send(200, {"choices": choices, "usage": {"prompt_tokens": 9}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def make(script, **kw):
        holder["script"] = script
        return OpenAIBackend(f"http://127.0.0.1:{server.server_address[1]}/v1", "m", backoff_s=0.01, **kw)

    yield make
    server.shutdown()


REQ = GenRequest("p1", [{"role": "user", "content": "hi"}], prefill="<think>\n", seed=5)


def test_retries_then_parses_token_ids_and_soft_labels(scripted):
    script = Script([503, 429])
    backend = scripted(script, max_retries=3)
    backend.check_reachable()
    [res] = backend.generate([REQ], SamplingConfig(n=2, topk_logprobs=2))
    assert len(script.bodies) == 3 and res.prompt_tokens == 9
    body = script.bodies[-1]
    assert body["messages"][-1] == {"role": "assistant", "content": "<think>\n"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["seed"] == 5 and body["return_tokens_as_token_ids"] is True and body["top_logprobs"] == 2
    s0, s1 = res.samples
    assert s0.text == "ans0-5" and s0.token_ids == [10, 11, 2] and s1.token_ids == [11, 11, 2]
    assert s0.topk_ids.tolist() == [[10, 11], [11, 12], [2, 3]]  # sorted by logprob, fixed width 2
    np.testing.assert_allclose(s0.topk_logprobs, [[-0.1, -2.0]] * 3)


def test_gives_up_after_max_retries_and_refuses_fast_on_400(scripted):
    script = Script([503] * 5)
    with pytest.raises(EndpointError, match="failed 3 times; last error: HTTP 503"):
        scripted(script, max_retries=2).generate([REQ], SamplingConfig(n=1))
    assert len(script.bodies) == 3
    script = Script([400])
    with pytest.raises(EndpointError, match="rejected a request .HTTP 400: .*scripted 400"):
        scripted(script, max_retries=5).generate([REQ], SamplingConfig(n=1))
    assert len(script.bodies) == 1


def test_soft_labels_need_token_ids(scripted):
    backend = scripted(Script([], token_ids=False))
    with pytest.raises(DistillkitError, match="did not return token ids"):
        backend.generate([REQ], SamplingConfig(n=1, topk_logprobs=2))


def test_bounded_concurrency_keeps_order(scripted):
    script = Script([])
    reqs = [GenRequest(f"p{i}", [{"role": "user", "content": str(i)}], seed=i) for i in range(7)]
    results = scripted(script, max_concurrency=3).generate(reqs, SamplingConfig(n=1))
    assert len(results) == 7 and len(script.bodies) == 7
    assert [r.samples[0].text for r in results] == [f"ans0-{i}" for i in range(7)]
