"""One retry policy for alignray's HTTP calls, against a real local server that fails, throttles
with Retry-After and answers slowly: the PPO reward scorer (`HttpRewardModel`) and the
labeller/judge `Endpoint`, both through the `openai` client. Also how a chat-only
labeller reads the (A)/(B) answer from a chat reply's top_logprobs."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from alignray.rewards.scorers import HttpRewardModel, RewardError
from alignray.sampling.endpoint import Endpoint, EndpointError
from alignray.sampling.types import Reply, SamplingSpec

CHAT_REPLY = {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class ScriptedServer:
    """Answers POSTs in the order of `script` (then 200 with `ok(body)`): "fail" is a 503, "throttle"
    a 429 with Retry-After: 1, "slow" a 200 that comes after the client's deadline, "bad" a 400,
    "html" a 200 with an HTML page.
    GET /v1/models names one model. Records when each POST arrived."""

    def __init__(self, script, ok):
        self.script, self.arrivals = list(script), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]})

            def do_POST(self):
                if self.path == "/tokenize":  # a chat-only server has no such route
                    return self._send(404, {"error": {"message": "Not Found"}})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    server.arrivals.append(time.monotonic())
                    step = server.script.pop(0) if server.script else "ok"
                if step == "fail":
                    self._send(503, {"error": {"message": "overloaded"}})
                elif step == "throttle":
                    self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
                elif step == "bad":
                    self._send(400, {"error": {"message": "no such field"}})
                elif step == "html":
                    self._send(200, "<html>oops</html>", {"Content-Type": "text/html"})
                else:
                    if step == "slow":
                        time.sleep(1.5)
                    self._send(200, ok(body))

            def _send(self, status, payload, headers=()):
                headers = {"Content-Type": "application/json", **dict(headers)}
                data = (payload if headers["Content-Type"] == "text/html" else json.dumps(payload)).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow answer
                    pass

            def log_message(self, *args):
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


def rewards_of(body):
    return {"rewards": [[float(len(r))] for r in body["responses"]]}


def test_reward_scorer_retries_failures_throttling_and_slow_answers():
    with ScriptedServer(["fail", "throttle", "slow"], rewards_of) as server:
        scorer = HttpRewardModel(f"{server.url}/score", timeout_s=1.0, retries=3)
        assert scorer(["p", "q"], ["ab", "abcd"]).tolist() == [[2.0], [4.0]]
    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:])]
    assert len(server.arrivals) == 4
    assert gaps[1] >= 1.0  # waited as Retry-After asked
    assert gaps[2] >= 1.0 + 0.5 * 0.75  # the slow answer: its 1 s deadline, then the third wait


def test_reward_scorer_gives_up_naming_the_url_and_does_not_retry_a_bad_request():
    with ScriptedServer(["fail"] * 3, rewards_of) as server:
        with pytest.raises(RewardError, match=rf"reward endpoint {server.url}/score: .*failed 2 times .*HTTP 503"):
            HttpRewardModel(f"{server.url}/score", timeout_s=5, retries=1)(["p"], ["a"])
        assert len(server.arrivals) == 2
    with ScriptedServer(["bad"], rewards_of) as server:
        with pytest.raises(RewardError, match="answered HTTP 400: .*no such field"):
            HttpRewardModel(f"{server.url}/score", timeout_s=5, retries=3)(["p"], ["a"])
        assert len(server.arrivals) == 1
    with ScriptedServer(["html"], rewards_of) as server:
        with pytest.raises(RewardError, match="answered something that is not JSON: '<html>oops"):
            HttpRewardModel(f"{server.url}/score", timeout_s=5, retries=3)(["p"], ["a"])


def test_endpoint_retries_through_the_openai_client(tmp_path):
    with ScriptedServer(["fail", "throttle", "slow"], lambda body: CHAT_REPLY) as server:
        endpoint = Endpoint(server.url, timeout_s=1.0, retries=3)
        assert endpoint.model == "m"
        assert endpoint.chat([[{"role": "user", "content": "hi"}]], SamplingSpec(max_tokens=4)) == [Reply("fine", "stop")]
    assert len(server.arrivals) == 4 and server.arrivals[2] - server.arrivals[1] >= 1.0
    with ScriptedServer(["fail"] * 3, lambda body: CHAT_REPLY) as server:
        endpoint = Endpoint(server.url, retries=1)
        with pytest.raises(EndpointError, match=rf"POST {server.url}/v1/chat/completions failed 2 times \(last: HTTP 503"):
            endpoint.chat([[{"role": "user", "content": "hi"}]], SamplingSpec(max_tokens=4))


# --- chat-only (A)/(B): the first answer token's top_logprobs ----------------------------------


def chat_reply(*positions):
    """A chat completion whose logprobs.content has one entry per (token, {token: logprob})."""
    content = [{"token": t, "logprob": tops.get(t, -9.0), "top_logprobs": [{"token": k, "logprob": v} for k, v in tops.items()]}
               for t, tops in positions]
    return {**CHAT_REPLY, "choices": [{**CHAT_REPLY["choices"][0], "logprobs": {"content": content}}]}


@pytest.mark.parametrize("positions, expected", [
    ([("A", {"A": -0.1, "B": -2.5, "The": -4.0})], [-0.1, -2.5]),
    ([("(", {"(": -0.2, "I": -1.0}), ("B", {"B": -0.3, " A": -1.5})], [-1.5, -0.3]),  # "(" skipped; " A" is A
    ([("**", {"**": -0.1}), ("A", {"A": -0.2, "C": -3.0})], [-0.2, -3.0]),  # B not in the top: the smallest listed
    ([("A", {"A": math.log(0.3), " A": math.log(0.2), "B": -1.0})], [math.log(0.5), -1.0]),  # spellings add up
    ([("I", {"I": -0.1, "Sorry": -1.0}), ("A", {"A": -0.1, "B": -0.2})], None),  # the answer is no option
])
def test_first_answer_token_gives_the_options_logprobs(positions, expected):
    endpoint = Endpoint.__new__(Endpoint)
    endpoint.base = "http://judge"
    got = endpoint._first_answer(chat_reply(*positions), ("A", "B"))
    assert got == expected if expected is None else got == pytest.approx(expected)


def test_chat_only_labels_read_top_logprobs_and_a_server_without_them_is_named(tmp_path):
    from alignray.feedback.rlaif import Comparison, label

    def judge(body):  # prefers whichever response is shown as (A), a little: position bias only
        assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["temperature"] == 0
        return chat_reply(("A", {"A": -0.5, "B": -1.0}))

    with ScriptedServer([], judge) as server:
        endpoint = Endpoint(server.url)  # auto: /tokenize answers 404, so chat
        [p] = label(endpoint.option_logprobs, [Comparison("Human: hi", "Which is better?", "x", "y")])
    assert endpoint.logprobs == "chat" and p == pytest.approx(0.5)  # both orders asked, the bias cancels
    with ScriptedServer([], lambda body: CHAT_REPLY) as server:
        with pytest.raises(EndpointError, match=f"{server.url}: the chat reply has no top_logprobs"):
            Endpoint(server.url, logprobs="chat").option_logprobs(["q"], ("A", "B"))
