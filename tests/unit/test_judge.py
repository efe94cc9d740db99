"""LLM-as-judge: verdict parsing, both-order pairwise scoring, grading, endpoint and local judges."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunelab.errors import ConfigError, ModelError
from tunelab.eval.judge import (
    DEFAULT_RUBRIC,
    EndpointJudge,
    JudgeConfig,
    LocalJudge,
    grade,
    make_judge,
    pair_prompt,
    pairwise,
    parse_rating,
    parse_verdict,
)
from tunelab.eval.preference import wilson_interval

_SHOWN = re.compile(r"\[The Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]",
                    re.DOTALL)


def shown_answers(text: str) -> tuple[str, str]:
    found = dict(_SHOWN.findall(text))
    return found["A"], found["B"]


def longer_verdict(text: str) -> str:
    a, b = shown_answers(text)
    return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"


class LongerJudge:
    """Prefers the longer answer whatever its position: a judge with no position bias."""

    def __init__(self):
        self.calls = []

    def complete(self, conversations):
        self.calls.append(conversations)
        return [f"Explanation.\nFinal verdict: {longer_verdict(c[-1]['content'])}" for c in conversations]


class FirstJudge:
    """Always picks the answer shown first: pure position bias."""

    def complete(self, conversations):
        return ["[[A]]"] * len(conversations)


class FixedJudge:
    """Replies with the given texts in turn."""

    def __init__(self, replies):
        self.replies, self.seen = replies, []

    def complete(self, conversations):
        self.seen.extend(conversations)
        return [self.replies[i % len(self.replies)] for i in range(len(conversations))]


@pytest.mark.parametrize("text, expected", [
    ("[[A]]", "A"), ("reasons... [[b]]", "B"), ("[[ C ]]", "C"), ("first [[A]] but finally [[B]]", "B"),
    ("[A]", None), ("[[D]]", None), ("A is better", None), ("", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Rating: [[7]]", 7), ("[[ 10 ]]", 10), ("[[1]]", 1), ("[[3]] on second thought [[9]]", 9), ("[[8.0]]", 8),
    ("[[0]]", None), ("[[11]]", None), ("[[8.5]]", None), ("Rating: 7", None), ("[[A]]", None), ("", None),
])
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected


def test_pairwise_counts_both_orders():
    questions = [f"q{i}" for i in range(5)]
    answers_a = ["long answer", "long answer", "long answer", "x", "same"]
    answers_b = ["x", "y", "z", "long answer", "SAME"]
    judge = LongerJudge()
    out = pairwise(judge, questions, answers_a, answers_b)
    assert len(judge.calls) == 1 and len(judge.calls[0]) == 10  # both orders in one batch
    # the second half shows B's answer first
    assert shown_answers(judge.calls[0][5][0]["content"]) == ("x", "long answer")
    assert (out["n"], out["win"], out["tie"], out["loss"]) == (5, 3, 1, 1)
    assert [it["outcome"] for it in out["items"]] == ["win", "win", "win", "loss", "tie"]
    assert out["items"][3] == {"first": "B", "second": "B", "outcome": "loss"}
    assert out["win_rate"] == 0.6 and out["loss_rate"] == 0.2
    lo, hi = wilson_interval(3, 5)
    assert (out["win_rate_lo95"], out["win_rate_hi95"]) == (round(lo, 5), round(hi, 5))
    lo, hi = wilson_interval(1, 5)
    assert (out["loss_rate_lo95"], out["loss_rate_hi95"]) == (round(lo, 5), round(hi, 5))
    assert out["score"] == pytest.approx(0.7)
    assert out["position_consistency"] == 1.0 and out["invalid"] == 0


def test_pairwise_position_bias_gives_ties():
    out = pairwise(FirstJudge(), ["q1", "q2", "q3"], ["a much longer answer", "a", "b"], ["b", "c", "d"])
    assert (out["win"], out["tie"], out["loss"]) == (0, 3, 0)
    assert out["position_consistency"] == 0.0 and out["score"] == 0.5 and out["invalid"] == 0
    assert all(it == {"first": "A", "second": "B", "outcome": "tie"} for it in out["items"])


def test_pairwise_unparsable_verdicts_are_ties_and_counted():
    class SecondOrderMute:
        def complete(self, conversations):
            half = len(conversations) // 2
            return ["[[A]]"] * half + ["I cannot decide."] * half

    out = pairwise(SecondOrderMute(), ["q1", "q2"], ["a", "b"], ["c", "d"])
    assert out["invalid"] == 2 and out["tie"] == 2 and out["win"] == 0
    assert out["position_consistency"] == 0.0
    assert out["items"][0] == {"first": "A", "second": None, "outcome": "tie"}


def test_pairwise_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 questions"):
        pairwise(FirstJudge(), ["q1", "q2"], ["a"], ["b", "c"])


def test_prompts_carry_rubric_and_reference():
    default = pair_prompt("Q?", "aa", "bb")[0]["content"]
    assert DEFAULT_RUBRIC in default and "Reference Answer" not in default and "[[C]]" in default
    judge = FixedJudge(["Rating: [[5]]"])
    grade(judge, ["Q?"], ["ans"], rubric="Judge only factual accuracy.", references=["the truth"])
    text = judge.seen[0][0]["content"]
    assert "Judge only factual accuracy." in text and DEFAULT_RUBRIC not in text
    assert "[The Start of Reference Answer]\nthe truth\n" in text and "Rating: [[5]]" in text
    assert text.index("the truth") < text.index("ans\n[The End of Assistant's Answer]")


def test_grade_mean_interval_and_invalid():
    judge = FixedJudge(["Rating: [[8]]", "[[6]]", "no rating here", "[[11]]", "Rating: [[10]]"])
    out = grade(judge, [f"q{i}" for i in range(5)], [f"a{i}" for i in range(5)])
    assert out["ratings"] == [8, 6, None, None, 10]
    assert out["n"] == 5 and out["invalid"] == 2 and out["mean"] == 8.0
    half = 1.96 * 2.0 / math.sqrt(3)  # sample sd of 8, 6, 10 is 2
    assert out["lo95"] == pytest.approx(8 - half, abs=1e-5) and out["hi95"] == pytest.approx(8 + half, abs=1e-5)


def test_grade_collapses_interval_with_few_ratings():
    one = grade(FixedJudge(["[[7]]", "nothing"]), ["q1", "q2"], ["a", "b"])
    assert one["mean"] == one["lo95"] == one["hi95"] == 7.0 and one["invalid"] == 1
    none = grade(FixedJudge(["nothing"]), ["q1"], ["a"])
    assert none["mean"] is None and none["lo95"] is None and none["invalid"] == 1


# ---- an OpenAI-compatible endpoint served in-process -------------------------------------------


class FakeEndpoint:
    def __init__(self):
        self.auth, self.inflight, self.max_inflight = [], 0, 0
        self.lock = threading.Lock()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers.get("Authorization", "")
                with state.lock:
                    state.auth.append(key)
                    state.inflight += 1
                    state.max_inflight = max(state.max_inflight, state.inflight)
                try:
                    if self.path != "/v1/chat/completions" or body["model"] == "missing":
                        return self._send(404, {"error": {"message": "model not found", "type": "invalid_request"}})
                    if key == "Bearer bad-key":
                        return self._send(401, {"error": {"message": "invalid key", "type": "auth"}})
                    if key == "Bearer echo-key":  # some servers echo the key back; it must not reach the user
                        return self._send(400, {"error": {"message": f"bad request from {key}", "type": "bad"}})
                    text = body["messages"][-1]["content"]
                    match = re.match(r"item (\d+)$", text)
                    if match:  # early items answer last, so replies finish out of order
                        time.sleep(0.05 * (8 - int(match.group(1))))
                        reply = f"echo {text}"
                    else:
                        time.sleep(0.02)
                        reply = f"Verdict: {longer_verdict(text)}"
                    self._send(200, {
                        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": reply}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    })
                finally:
                    with state.lock:
                        state.inflight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def endpoint():
    fake = FakeEndpoint()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def test_endpoint_judge_keeps_order_with_concurrency(endpoint, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-123")
    judge = make_judge(JudgeConfig(base_url=endpoint.url, endpoint_model="judge-m", api_key_env="MY_JUDGE_KEY"))
    assert isinstance(judge, EndpointJudge)
    judge.concurrency = 4
    convs = [[{"role": "user", "content": f"item {i}"}] for i in range(8)]
    assert judge.complete(convs) == [f"echo item {i}" for i in range(8)]
    assert endpoint.max_inflight > 1
    assert endpoint.auth and set(endpoint.auth) == {"Bearer sk-test-123"}


def test_endpoint_judge_pairwise(endpoint):
    judge = EndpointJudge(endpoint.url, "judge-m", api_key="k", concurrency=3)
    out = pairwise(judge, ["q1", "q2", "q3"], ["long answer", "x", "y"], ["x", "long answer", "z"])
    assert [it["outcome"] for it in out["items"]] == ["win", "loss", "tie"]
    assert out["position_consistency"] == 1.0 and len(endpoint.auth) == 6


def test_endpoint_closed_port_names_url_not_key(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-999")
    judge = EndpointJudge(url, "judge-m", max_retries=0, timeout=5)
    with pytest.raises(ModelError) as err:
        judge.complete([[{"role": "user", "content": "hi"}]])
    msg = str(err.value)
    assert url in msg and "judge-m" in msg and "judge.base_url" in msg and "sk-secret-999" not in msg


def test_endpoint_auth_and_not_found_errors(endpoint):
    with pytest.raises(ModelError) as err:
        EndpointJudge(endpoint.url, "judge-m", api_key="bad-key", max_retries=0).complete([[{"role": "user",
                                                                                           "content": "hi"}]])
    msg = str(err.value)
    assert "401" in msg and "OPENAI_API_KEY" in msg and "bad-key" not in msg and endpoint.url in msg
    with pytest.raises(ModelError) as err:
        EndpointJudge(endpoint.url, "judge-m", api_key="echo-key", max_retries=0).complete([[{"role": "user",
                                                                                            "content": "hi"}]])
    assert "400" in str(err.value) and "bad request" in str(err.value) and "echo-key" not in str(err.value)
    with pytest.raises(ModelError, match="judge.endpoint_model"):
        EndpointJudge(endpoint.url, "missing", api_key="k", max_retries=0).complete([[{"role": "user",
                                                                                       "content": "hi"}]])


# ---- local judges and make_judge ------------------------------------------------------------------


def test_local_judge_plumbing(tiny):
    model, tok = tiny
    judge = LocalJudge(model, tok, max_new_tokens=8, batch_size=4)
    replies = judge.complete([[{"role": "user", "content": "Is 2+2 4?"}], [{"role": "user", "content": "Hi"}]])
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    out = pairwise(judge, ["What is 2+2?", "Name a colour."], ["4", "red"], ["5", "blue"])
    # a random model writes no verdicts: every one is invalid and every question a tie
    assert out["n"] == 2 and out["invalid"] == 4 and out["tie"] == 2


def test_make_judge_needs_model_or_url():
    with pytest.raises(ConfigError) as err:
        make_judge(JudgeConfig())
    assert "judge.model" in str(err.value) and "judge.base_url" in str(err.value)
    with pytest.raises(ConfigError, match="endpoint_model: a judge endpoint needs the model name"):
        make_judge(JudgeConfig(base_url="http://127.0.0.1:1/v1"))


def test_make_judge_loads_local_model(tiny_model_dir):
    judge = make_judge(JudgeConfig(model=str(tiny_model_dir), max_new_tokens=4))
    assert isinstance(judge, LocalJudge) and judge.max_new_tokens == 4
    assert len(judge.complete([[{"role": "user", "content": "hi"}]])) == 1
