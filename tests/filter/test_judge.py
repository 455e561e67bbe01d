"""The model-judge verifier against a scripted stub endpoint and a real vLLM OpenAI server on loopback.

The stub (http.server in a thread on 127.0.0.1) answers from a script keyed by a marker in the
problem text, can fail the next N requests with chosen statuses, holds requests to expose the
concurrency bound, and counts everything it receives. The vLLM server serves the random tiny model,
whose replies are garbage: the honest "judge_unparseable" path, with real token usage.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from distillkit.config import FilterConfig, VerifierSpec
from distillkit.errors import DistillkitError
from distillkit.filter.stage import filter_records
from distillkit.registry import build, validate_spec
from distillkit.verify.verifiers.judge import DEFAULT_PROMPT_TEMPLATE, parse_verdict

PROMPT_TOKENS, COMPLETION_TOKENS = 100, 10


class Stub:
    """A scripted OpenAI-compatible /v1/chat/completions endpoint."""

    def __init__(self):
        self.script: dict[str, str] = {}  # marker in the user message -> reply content
        self.failures: list[tuple[int, dict]] = []  # (status, headers) for the next requests
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.hold_for = 0  # hold requests until this many were in flight at once (or 2 s pass)
        self.inflight = self.max_inflight = 0
        self.cond = threading.Condition()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.cond:
                    stub.bodies.append(body)
                    stub.auth.append(self.headers.get("Authorization"))
                    failure = stub.failures.pop(0) if stub.failures else None
                    stub.inflight += 1
                    stub.max_inflight = max(stub.max_inflight, stub.inflight)
                    stub.cond.notify_all()
                    if stub.hold_for:
                        # Released for good once the bound was reached: later stragglers need not wait.
                        stub.cond.wait_for(lambda: stub.max_inflight >= stub.hold_for, timeout=2.0)
                try:
                    if failure:
                        status, headers = failure
                        self.send_response(status)
                        for k, v in headers.items():
                            self.send_header(k, v)
                        payload = b'{"error": "scripted failure"}'
                    else:
                        user = body["messages"][-1]["content"]
                        reply = next((r for m, r in stub.script.items() if m in user), "I am not sure.")
                        payload = json.dumps({
                            "id": "x", "object": "chat.completion", "model": body["model"],
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": reply}}],
                            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                                      "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}}).encode()
                        self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    with stub.cond:
                        stub.inflight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def num_requests(self) -> int:
        return len(self.bodies)


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.server.shutdown()
    s.server.server_close()


def judge(base_url, tmp_path, **params):
    params = {"base_url": base_url, "model": "judge-model", "cache_dir": str(tmp_path / "cache"),
              "backoff_s": 0.01, **params}
    return build("judge", params)


def rec(marker, gold="42", answer="The answer is 42."):
    return {"id": marker, "problem": f"[{marker}] What is six times seven?", "gold_answer": gold,
            "response": answer, "reasoning_closed": True}


def closed_port_url() -> str:
    with socket.socket() as s:  # bind, read the port, close: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# ---------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("reply, expected", [
    ("The answer matches.\nVERDICT: CORRECT", True),
    ("It says 41, not 42.\nVERDICT: INCORRECT\n\n", False),
    ("<think>hmm</think>\nFine.\n  VERDICT: CORRECT  ", True),
    ("VERDICT: CORRECT\nActually, wait, it is wrong.", None),  # verdict not on the last line
    ("verdict: correct", None),
    ("VERDICT: CORRECT.", None),
    ("**VERDICT: CORRECT**", None),
    ("VERDICT: MAYBE", None),
    ("VERDICT:CORRECT", None),
    ("", None),
])
def test_parse_verdict_is_strict(reply, expected):
    assert parse_verdict(reply) is expected


def test_scripted_replies_give_verdicts_reasons_and_tokens(stub, tmp_path):
    stub.script = {"[ok]": "Same value.\nVERDICT: CORRECT", "[bad]": "41 is not 42.\nVERDICT: INCORRECT",
                   "[late]": "VERDICT: CORRECT\nbut maybe not", "[lower]": "verdict: correct", "[empty]": ""}
    records = [rec(m) for m in ("ok", "bad", "late", "lower", "empty")]
    with judge(stub.base_url, tmp_path) as j:
        verdicts = j.batch(records)
        stats = j.stats()
    assert [(v.passed, v.reason) for v in verdicts] == [
        (True, "judge_correct"), (False, "judge_incorrect"),
        (None, "judge_unparseable"), (None, "judge_unparseable"), (None, "judge_unparseable")]
    detail = json.loads(verdicts[1].detail)
    assert detail == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "cached": False,
                      "finish_reason": "stop", "last_line": "VERDICT: INCORRECT"}
    assert stats["requests"] == 5 and stats["judged"] == 5 and stats.get("cache_hits", 0) == 0
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (5 * PROMPT_TOKENS, 5 * COMPLETION_TOKENS)
    assert stats["reasons"] == {"judge_correct": 1, "judge_incorrect": 1, "judge_unparseable": 3}


def test_prompt_carries_problem_reference_rubric_and_answer_only(stub, tmp_path):
    r = rec("p", gold="42", answer="So it is \\boxed{42}.")
    r.update(reasoning="secret scratch work", completion="<think>secret scratch work</think>So it is \\boxed{42}.")
    with judge(stub.base_url, tmp_path, rubric="State the number.", max_tokens=64, temperature=0.0) as j:
        j(r)
    body = stub.bodies[0]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("judge-model", 64, 0.0)
    user = body["messages"][-1]["content"]
    assert user == DEFAULT_PROMPT_TEMPLATE.format(problem=r["problem"], reference="42", rubric="State the number.",
                                                  answer="So it is \\boxed{42}.")
    assert "secret scratch work" not in user  # the judge grades the final answer, not the reasoning


def test_template_override_and_validation(stub, tmp_path):
    with judge(stub.base_url, tmp_path, system_prompt="", prompt_template="Q: {problem}\nA: {answer}") as j:
        j(rec("t"))
    assert stub.bodies[0]["messages"] == [{"role": "user", "content": "Q: [t] What is six times seven?\n"
                                                                      "A: The answer is 42."}]
    with pytest.raises(ValueError, match=r"unknown placeholders \['gold'\]"):
        validate_spec("judge", {"base_url": "http://x/v1", "model": "m", "prompt_template": "{gold} {answer}"})
    with pytest.raises(ValueError, match=r"must contain \{answer\}"):
        validate_spec("judge", {"base_url": "http://x/v1", "model": "m", "prompt_template": "{problem}"})
    with pytest.raises(ValueError, match="on_unreachable"):
        VerifierSpec(kind="judge", base_url="http://x/v1", model="m", on_unreachable="pass")


def test_records_without_reference_or_answer_cost_nothing(stub, tmp_path):
    with judge(stub.base_url, tmp_path) as j:
        verdicts = j.batch([rec("a", gold=None), rec("b", answer="   ")])
    assert [(v.passed, v.reason) for v in verdicts] == [(None, "no_reference"), (None, "no_answer")]
    assert stub.num_requests == 0
    stub.script = {"[c]": "VERDICT: CORRECT"}
    with judge(stub.base_url, tmp_path, rubric="A proof by induction with a base case.") as j:
        assert j(rec("c", gold=None)).reason == "judge_correct"  # a rubric stands in for a reference
    assert "REFERENCE:\n(none)" in stub.bodies[0]["messages"][-1]["content"]


# -------------------------------------------------------------------------------------- transport


def test_retries_500_and_429_then_succeeds(stub, tmp_path):
    stub.script = {"[r]": "VERDICT: CORRECT"}
    stub.failures = [(500, {}), (429, {"Retry-After": "0"}), (503, {})]
    with judge(stub.base_url, tmp_path, max_retries=3) as j:
        v = j(rec("r"))
        stats = j.stats()
    assert (v.passed, v.reason) == (True, "judge_correct")
    assert stub.num_requests == 4 and (stats["requests"], stats["retries"]) == (4, 3)


def test_bad_request_is_not_retried_and_leaves_record_unjudged(stub, tmp_path):
    stub.failures = [(400, {})]
    with judge(stub.base_url, tmp_path) as j:
        v = j(rec("long"))
    assert (v.passed, v.reason) == (None, "judge_rejected_request") and "HTTP 400" in v.detail
    assert stub.num_requests == 1


def test_concurrency_is_bounded(stub, tmp_path):
    # Each request is held until 3 are in flight: a bound of 3 reaches exactly 3, never more.
    stub.hold_for = 3
    stub.script = {"[": "VERDICT: CORRECT"}
    with judge(stub.base_url, tmp_path, max_concurrency=3) as j:
        verdicts = j.batch([rec(f"c{k}") for k in range(12)])
    assert [v.reason for v in verdicts] == ["judge_correct"] * 12
    assert stub.num_requests == 12 and stub.max_inflight == 3


def test_cache_makes_a_rerun_send_no_request(stub, tmp_path):
    stub.script = {"[x]": "VERDICT: CORRECT", "[y]": "VERDICT: INCORRECT", "[z]": "no verdict here"}
    records = [rec("x"), rec("y"), rec("z")]
    with judge(stub.base_url, tmp_path) as j:
        first = j.batch(records)
    assert stub.num_requests == 3
    with judge(stub.base_url, tmp_path) as j:  # a new run: fresh verifier, same cache folder
        second = j.batch(records)
        stats = j.stats()
    assert stub.num_requests == 3  # zero new requests
    assert [(v.passed, v.reason) for v in second] == [(v.passed, v.reason) for v in first]
    assert all(json.loads(v.detail)["cached"] for v in second)
    assert (stats.get("requests", 0), stats["cache_hits"]) == (0, 3)
    assert (stats.get("prompt_tokens", 0), stats["cached_prompt_tokens"]) == (0, 3 * PROMPT_TOKENS)
    # The key holds the judged completion and the judge model: changing either asks again.
    with judge(stub.base_url, tmp_path) as j:
        j(rec("x", answer="The answer is 41."))
    assert stub.num_requests == 4
    with judge(stub.base_url, tmp_path, model="another-judge") as j:
        j(rec("x"))
    assert stub.num_requests == 5
    with judge(stub.base_url, tmp_path, use_cache=False) as j:
        j(rec("x"))
    assert stub.num_requests == 6


def test_default_cache_lives_under_distillkit_cache(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLKIT_CACHE", str(tmp_path / "dk"))
    with build("judge", {"base_url": stub.base_url, "model": "m"}) as j:
        j(rec("d"))
    assert len(list((tmp_path / "dk" / "judge").glob("*/*.json"))) == 1


# ------------------------------------------------------------------------------------ unreachable


def test_unreachable_judge_is_one_clear_error(tmp_path):
    url = closed_port_url()
    with judge(url, tmp_path, max_retries=1) as j:
        with pytest.raises(DistillkitError, match="unreachable") as e:
            j.batch([rec("u1"), rec("u2")])
    assert url in str(e.value) and "on_unreachable: cannot_judge" in str(e.value)


def test_unreachable_judge_can_leave_every_record_unjudged(tmp_path):
    with judge(closed_port_url(), tmp_path, max_retries=1, on_unreachable="cannot_judge") as j:
        verdicts = j.batch([rec(f"u{k}") for k in range(5)])
        later = j.batch([rec("u9")])  # the endpoint stays down for the rest of the run
    assert {(v.passed, v.reason) for v in verdicts + later} == {(None, "judge_unreachable")}


def test_failing_server_is_given_up_after_one_record_of_retries(stub, tmp_path):
    stub.failures = [(503, {})] * 100
    with judge(stub.base_url, tmp_path, max_retries=2, max_concurrency=1, on_unreachable="cannot_judge") as j:
        verdicts = j.batch([rec(f"f{k}") for k in range(4)])
    assert [v.reason for v in verdicts] == ["judge_unreachable"] * 4
    assert stub.num_requests == 3  # 1 + 2 retries for the first record, then no more requests


def test_api_key_comes_from_the_named_env_var_and_is_never_logged(stub, tmp_path, monkeypatch, caplog):
    secret = "sk-test-5ecret-value"
    monkeypatch.setenv("MY_JUDGE_KEY", secret)
    stub.failures = [(500, {})]  # a retry, so a warning is logged
    stub.script = {"[k]": "VERDICT: CORRECT"}
    with caplog.at_level(logging.DEBUG):
        with judge(stub.base_url, tmp_path, api_key_env="MY_JUDGE_KEY") as j:
            v = j(rec("k"))
    assert v.reason == "judge_correct" and stub.auth == [f"Bearer {secret}"] * 2
    assert "retry 1/" in caplog.text and secret not in caplog.text and secret not in v.detail
    stub.failures = [(401, {})]
    with judge(stub.base_url, tmp_path, api_key_env="MY_JUDGE_KEY") as j:
        with pytest.raises(DistillkitError, match="refused the API key") as e:
            j(rec("k2"))
    assert "MY_JUDGE_KEY" in str(e.value) and secret not in str(e.value)
    monkeypatch.delenv("MY_JUDGE_KEY")
    with pytest.raises(DistillkitError, match="MY_JUDGE_KEY.*not set"):
        judge(stub.base_url, tmp_path, api_key_env="MY_JUDGE_KEY")


# ------------------------------------------------------------------------------- in the filter stage


def stage_records():
    base = {"prompt_id": "", "sample_index": 0, "source": "s", "reasoning_closed": True}
    return [
        {**base, "id": "right", "prompt_id": "p1", "problem": "[right] 6*7?", "gold_answer": "42",
         "response": "\\boxed{42}"},
        {**base, "id": "wrong", "prompt_id": "p2", "problem": "[wrong] 6*7?", "gold_answer": "42",
         "response": "\\boxed{41}"},
        {**base, "id": "free", "prompt_id": "p3", "problem": "[free] Prove it.", "gold_answer": None,
         "response": "By induction on n ..."},
    ]


def stage_config(base_url, tmp_path, with_math=True, **params):
    params = {"base_url": base_url, "model": "judge-model", "cache_dir": str(tmp_path / "cache"),
              "rubric": "A complete induction proof.", "backoff_s": 0.01, **params}
    rules = [VerifierSpec(kind="math")] if with_math else []
    return FilterConfig(verifiers=[*rules, VerifierSpec(kind="judge", **params)],
                        dedup={"exact": False, "near": {"enabled": False}}, num_workers=1)


def test_stage_never_overrides_rule_verdicts_by_default(stub, tmp_path):
    # The stub calls everything correct: only the record math could not judge may be judged.
    stub.script = {"[": "Fine.\nVERDICT: CORRECT"}
    result = filter_records(stage_records(), stage_config(stub.base_url, tmp_path), show_progress=False)
    judge_verdicts = [dict(v)["judge"] for v in result.verdicts]
    assert [(v.passed, v.reason) for v in judge_verdicts] == [
        (None, "rule_verdict_kept"), (None, "rule_verdict_kept"), (True, "judge_correct")]
    assert judge_verdicts[1].detail == "math: wrong_answer"
    assert stub.num_requests == 1 and "[free]" in stub.bodies[0]["messages"][-1]["content"]
    assert result.kept == [True, False, True]  # the math failure stands despite the judge's "correct"
    usage = result.stats["verifiers"]["judge"]
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (1, PROMPT_TOKENS,
                                                                                        COMPLETION_TOKENS)
    assert result.stats["reasons"]["judge"] == {"judge_correct": 1, "rule_verdict_kept": 2}


def test_stage_override_rules_lets_the_judge_veto_a_rule_pass(stub, tmp_path):
    stub.script = {"[right]": "VERDICT: INCORRECT", "[": "VERDICT: CORRECT"}
    cfg = stage_config(stub.base_url, tmp_path, override_rules=True)
    result = filter_records(stage_records(), cfg, show_progress=False)
    assert [dict(v)["judge"].reason for v in result.verdicts] == ["judge_incorrect", "judge_correct",
                                                                  "judge_correct"]
    assert stub.num_requests == 3
    assert result.kept == [False, False, True]  # a judge "correct" cannot rescue a math failure


def test_stage_stops_on_an_unreachable_judge(tmp_path):
    cfg = stage_config(closed_port_url(), tmp_path, with_math=False, max_retries=0)
    with pytest.raises(DistillkitError, match="unreachable"):
        filter_records(stage_records(), cfg, show_progress=False)


# -------------------------------------------------------------------------------- real vLLM server


@pytest.fixture(scope="module")
def vllm_server(tiny_qwen2, tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("vllm_judge") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_qwen2),
             "--served-model-name", "tiny-judge", "--host", "127.0.0.1", "--port", str(port),
             "--enforce-eager", "--max-model-len", "2048", "--seed", "0"],
            # Own session: teardown signals the whole group, so the engine processes cannot outlive it.
            stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    import httpx

    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300  # ~40 s on an idle 2-core machine; much more when it is shared
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                pytest.fail(f"vLLM server not up after 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever of it is left (engine core, workers)."""
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.time() + grace
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)  # is any member of the group left?
            except ProcessLookupError:
                return
            time.sleep(0.5)


def served_requests(url: str) -> float:
    """Finished requests according to the server's own Prometheus counter."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


@pytest.mark.slow
def test_real_vllm_judge_garbage_is_unparseable_and_cached(vllm_server, tmp_path):
    records = [rec("v1"), rec("v2", answer="It is 41."), rec("v3", gold=None)]  # v3: no reference, no request
    params = {"base_url": f"{vllm_server}/v1", "model": "tiny-judge", "cache_dir": str(tmp_path / "cache"),
              "max_tokens": 8, "max_concurrency": 2, "timeout_s": 60}
    before = served_requests(vllm_server)
    with build("judge", params) as j:
        verdicts = j.batch(records)
        stats = j.stats()
    # A random model does not write "VERDICT: CORRECT" on its last line: never a pass, never a fail.
    assert [(v.passed, v.reason) for v in verdicts] == [(None, "judge_unparseable")] * 2 + [(None, "no_reference")]
    details = [json.loads(v.detail) for v in verdicts[:2]]
    assert all(d["prompt_tokens"] > 100 and 0 < d["completion_tokens"] <= 8 and not d["cached"] for d in details)
    assert stats["requests"] == 2 and stats["prompt_tokens"] == sum(d["prompt_tokens"] for d in details)
    assert served_requests(vllm_server) - before == 2

    with build("judge", params) as j:  # rerun: everything from the cache, nothing reaches the server
        again = j.batch(records)
        stats = j.stats()
    assert [v.reason for v in again] == [v.reason for v in verdicts]
    assert (stats.get("requests", 0), stats["cache_hits"]) == (0, 2)
    assert served_requests(vllm_server) - before == 2


def test_records_the_judge_cannot_judge_are_rejected_by_default_and_warned_about(stub, tmp_path):
    """A judge that never writes a verdict line: every record is judge_unparseable. Deciding is the judge's
    only job, so by default they are rejected, and the manifest carries a warning the CLI and report show."""
    stub.script = {"[": "Looks plausible to me."}
    result = filter_records(stage_records(), stage_config(stub.base_url, tmp_path, with_math=False),
                            show_progress=False)
    assert result.kept == [False, False, False]
    judge_row = next(r for r in result.stats["funnel"] if r["step"] == "judge")
    assert judge_row["rejected"] == 3 and result.stats["outcomes"]["judge"]["cannot_judge"] == {"judge_unparseable": 3}
    assert result.stats["warnings"] == [
        "judge could not judge 3 of 3 records (100%: judge_unparseable 3); they were rejected "
        "(filter.verifiers[0].on_cannot_judge). Check the verifier's inputs and settings"]
    assert result.stats["sources"]["s"]["passed_verifiers"] == 0  # not counted as solved either

    keep = stage_config(stub.base_url, tmp_path, with_math=False, on_cannot_judge="keep")
    result = filter_records(stage_records(), keep, show_progress=False)
    assert result.kept == [True, True, True] and "they were kept" in result.stats["warnings"][0]


def test_on_cannot_judge_applies_to_any_verifier_and_the_warning_share_is_set(stub, tmp_path):
    """math cannot judge the record without a gold answer: kept by default, rejected with on_cannot_judge: reject;
    one of three (33%) is over the default 20% warning share and under a share of 0.5."""
    base = {"dedup": {"exact": False, "near": {"enabled": False}}, "num_workers": 1}
    kept = filter_records(stage_records(), FilterConfig(verifiers=[VerifierSpec(kind="math")], **base),
                          show_progress=False)
    assert kept.kept == [True, False, True] and "math could not judge 1 of 3 records" in kept.stats["warnings"][0]
    strict = FilterConfig(verifiers=[VerifierSpec(kind="math", on_cannot_judge="reject")], warn_cannot_judge=0.5, **base)
    result = filter_records(stage_records(), strict, show_progress=False)
    assert result.kept == [True, False, False] and result.stats["warnings"] == []
    with pytest.raises(ValueError, match="on_cannot_judge"):
        VerifierSpec(kind="math", on_cannot_judge="maybe")
