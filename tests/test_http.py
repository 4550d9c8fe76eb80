"""The shared HTTP transport against a local server that misbehaves the ways real servers do:
every call ends in the right answer or error within its deadline."""

from __future__ import annotations

import random
import time

import pydantic
import pytest

from resources.http import (
    HttpClient,
    HttpDeadlineExceeded,
    HttpError,
    HttpPolicy,
    HttpProtocolError,
    HttpUnavailable,
    backoff_delay,
    server_message,
)
from tests.http_server import (
    ScriptedServer,
    answer,
    close_connection,
    drip_body,
    drip_headers,
    free_port_refusing,
    silence,
)

FAST = HttpPolicy(connect_timeout_s=1, read_timeout_s=1, deadline_s=2, backoff_base_s=0.05, backoff_cap_s=0.2)


class Thing(pydantic.BaseModel):
    id: str
    count: int


@pytest.fixture
def server():
    with ScriptedServer() as srv:
        yield srv


def timed(fn):
    start = time.monotonic()
    try:
        return fn(), time.monotonic() - start
    except Exception as exc:  # the caller asserts on the type
        return exc, time.monotonic() - start


def test_body_dripped_byte_by_byte_ends_at_the_deadline(server):
    """Each byte arrives well within the read timeout; only the overall deadline stops it."""
    server.script("/slow", drip_body(total_bytes=10_000, interval_s=0.05))
    client = HttpClient(server.url, FAST, name="drip")
    error, took = timed(lambda: client.request("GET", "/slow"))
    assert isinstance(error, HttpDeadlineExceeded), error
    assert "GET " + server.url + "/slow" in str(error) and "2 s deadline" in str(error)
    assert 1.9 <= took < 3.0


def test_headers_dripped_forever_end_at_the_deadline(server):
    """The status line and endless header lines: the watchdog shuts the socket at the deadline."""
    server.script("/h", drip_headers(interval_s=0.05))
    client = HttpClient(server.url, FAST)
    error, took = timed(lambda: client.request("GET", "/h"))
    assert isinstance(error, HttpDeadlineExceeded), error
    assert took < 3.0


def test_503_then_200_is_retried_and_answers(server):
    server.script("/x", answer(503, {"error": {"message": "warming up"}}), answer(200, {"id": "a", "count": 2}))
    client = HttpClient(server.url, FAST)
    answer_ = client.request("GET", "/x")
    assert answer_.status == 200 and answer_.retries == 1
    assert answer_.json(Thing) == Thing(id="a", count=2)
    assert len(server.hits("/x")) == 2


def test_retries_stop_after_three_and_name_the_status(server):
    server.script("/x", answer(502, "<html>bad gateway</html>", content_type="text/html"))
    client = HttpClient(server.url, HttpPolicy(backoff_base_s=0.01, backoff_cap_s=0.02, deadline_s=5))
    result = client.request("GET", "/x")
    assert result.status == 502 and result.retries == 3
    assert len(server.hits("/x")) == 4  # SPEC: at most 3 retries
    with pytest.raises(HttpUnavailable, match=r"expected HTTP 200; got HTTP 502 after 3 retries: <html>bad gateway"):
        result.expect(200)


def test_429_honours_retry_after_up_to_the_cap(server):
    server.script("/x", answer(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "1"}), answer(200, {"ok": 1}))
    client = HttpClient(server.url, HttpPolicy(backoff_base_s=0.01, backoff_cap_s=5, deadline_s=5))
    client.request("GET", "/x").expect(200)
    first, second = server.hits("/x")
    assert 0.9 <= second.at - first.at < 2.0  # waited the server's 1 s, not our 0.01 s

    server.script("/y", answer(429, {}, headers={"Retry-After": "120"}), answer(200, {"ok": 1}))
    capped = HttpClient(server.url, HttpPolicy(backoff_base_s=0.01, backoff_cap_s=0.3, deadline_s=5))
    _, took = timed(lambda: capped.request("GET", "/y").expect(200))
    assert took < 1.5  # a Retry-After of 2 minutes is capped at backoff_cap_s


def test_a_wait_past_the_deadline_is_not_taken(server):
    server.script("/x", answer(503, {}, headers={"Retry-After": "30"}))
    client = HttpClient(server.url, HttpPolicy(backoff_cap_s=30, deadline_s=1))
    error, took = timed(lambda: client.request("GET", "/x"))
    assert isinstance(error, HttpDeadlineExceeded) and took < 0.5, error


def test_post_is_not_retried_unless_the_caller_says_it_is_safe(server):
    server.script("/p", answer(503, {"error": "busy"}), answer(200, {"ok": True}))
    unsafe = HttpClient(server.url, FAST)
    assert unsafe.request("POST", "/p", json={"a": 1}).status == 503
    assert len(server.hits("/p")) == 1

    server.script("/q", answer(503, {"error": "busy"}), answer(200, {"ok": True}))
    safe = HttpClient(server.url, FAST, retry_post=True)
    assert safe.request("POST", "/q", json={"a": 1}).json() == {"ok": True}
    assert [r.json for r in server.hits("/q")] == [{"a": 1}, {"a": 1}]


def test_html_instead_of_json_names_endpoint_and_expectation(server):
    server.script("/j", answer(200, "<html><body>Login</body></html>", content_type="text/html"))
    client = HttpClient(server.url, FAST)
    with pytest.raises(HttpProtocolError) as info:
        client.get_json("/j")
    message = str(info.value)
    assert f"GET {server.url}/j" in message and "media type application/json" in message and "text/html" in message


def test_json_media_type_with_garbage_body_and_wrong_shape(server):
    server.script("/bad", answer(200, b"{not json"))
    server.script("/shape", answer(200, {"id": 3}))
    client = HttpClient(server.url, FAST)
    with pytest.raises(HttpProtocolError, match="undecodable JSON"):
        client.get_json("/bad")
    with pytest.raises(HttpProtocolError, match=r"expected JSON Thing; got a body that does not match \(id: .*count: Field required"):
        client.get_json("/shape", Thing)


def test_connection_closed_without_answer(server):
    server.script("/c", close_connection())
    client = HttpClient(server.url, FAST)
    error, took = timed(lambda: client.request("GET", "/c"))
    assert isinstance(error, HttpError) and not isinstance(error, HttpDeadlineExceeded), error
    assert server.url in str(error) and took < 2.0


def test_nothing_listening_is_unavailable_after_the_retries():
    url = free_port_refusing()
    client = HttpClient(url, FAST, name="comfyui")
    error, took = timed(lambda: client.request("GET", "/prompt"))
    assert isinstance(error, HttpUnavailable), error
    assert f"GET {url}/prompt" in str(error) and "comfyui" in str(error) and "after 3 retries" in str(error)
    assert took < 2.0


def test_silence_past_the_read_timeout_is_a_timeout(server):
    server.script("/s", silence(3))
    client = HttpClient(server.url, HttpPolicy(read_timeout_s=0.5, deadline_s=5))
    error, took = timed(lambda: client.request("GET", "/s"))
    assert isinstance(error, HttpDeadlineExceeded) and "read timeout" in str(error), error
    assert took < 1.5
    assert len(server.hits("/s")) == 1  # a read timeout is not retried: the work may still be running


def test_body_size_is_bounded(server):
    server.script("/big", answer(200, b"x" * 5000))
    client = HttpClient(server.url, FAST)
    with pytest.raises(HttpProtocolError, match="a body of at most 1000 bytes"):
        client.request("GET", "/big", max_body_bytes=1000)
    assert client.request("GET", "/big").body == b"x" * 5000


def test_status_the_protocol_does_not_expect_carries_the_server_message(server):
    server.script("/v1/chat/completions", answer(401, {"error": {"message": "invalid api key", "type": "auth", "code": 401}}))
    client = HttpClient(server.url, FAST, retry_post=True)
    with pytest.raises(HttpProtocolError) as info:
        client.post_json("/v1/chat/completions", {"model": "current"})
    assert info.value.status == 401 and "invalid api key" in str(info.value)
    assert len(server.hits("/v1/chat/completions")) == 1  # 4xx is not retried


def test_backoff_follows_spec_and_grows():
    rng = random.Random(1)
    delays = [backoff_delay(n, 10, 300, rng) for n in range(7)]
    for n, delay in enumerate(delays):
        ceiling = min(10 * 2**n, 300)
        assert ceiling / 2 <= delay <= ceiling


def test_server_message_reads_the_usual_error_shapes():
    assert server_message(b'{"error": {"message": "model not found", "type": "x"}}') == "model not found"
    assert server_message('{"detail": [{"loc": ["body", "text"], "msg": "field required"}]}') == "body.text: field required"
    assert server_message(b"<h1>502  Bad\n Gateway</h1>") == "<h1>502 Bad Gateway</h1>"
    assert server_message(b"") == "(empty body)"


def test_policy_refuses_nonsense():
    with pytest.raises(ValueError, match="deadline_s"):
        HttpPolicy(deadline_s=0)
    with pytest.raises(ValueError, match="max_retries"):
        HttpPolicy(max_retries=50)


def test_deadline_holds_on_a_kept_alive_connection(server):
    """The second call reuses the first one's socket; the watchdog must still reach it."""
    server.script("/ok", answer(200, {"ok": 1}))
    server.script("/slow", drip_body(interval_s=0.05))
    client = HttpClient(server.url, FAST)
    assert client.get_json("/ok") == {"ok": 1}
    error, took = timed(lambda: client.request("GET", "/slow"))
    assert isinstance(error, HttpDeadlineExceeded) and took < 3.0, error
    assert client.get_json("/ok") == {"ok": 1}  # the client still works after a deadline


def test_a_post_can_be_declared_safe_for_one_call(server):
    server.script("/p", answer(503, {}), answer(200, {"ok": True}))
    client = HttpClient(server.url, FAST)
    assert client.request("POST", "/p", json={}, retry_post=True).json() == {"ok": True}
    assert len(server.hits("/p")) == 2
    server.script("/q", answer(503, {}), answer(200, {"ok": True}))
    assert client.request("POST", "/q", json={}).status == 503  # the client's default still holds


def test_a_secret_in_the_url_path_stays_out_of_errors(server):
    secret = "/services/T000/B000/s3cr3t"
    server.script(secret, answer(500, {"error": "x"}))
    client = HttpClient(server.url + secret, FAST, redact_path=True)
    with pytest.raises(HttpError) as info:
        client.request("POST", "", json={"text": "hi"}).expect(200)
    assert "s3cr3t" not in str(info.value) and "127.0.0.1" in str(info.value)
    down = HttpClient(free_port_refusing() + secret, FAST, redact_path=True)
    with pytest.raises(HttpUnavailable) as info:
        down.request("POST", "", json={})
    assert "s3cr3t" not in str(info.value)


def test_backoff_waits_never_run_past_the_deadline(server):
    server.script("/x", answer(503, {"error": "busy"}))
    client = HttpClient(server.url, HttpPolicy(backoff_base_s=0.4, backoff_cap_s=5, deadline_s=1))
    error, took = timed(lambda: client.request("GET", "/x"))
    assert isinstance(error, HttpDeadlineExceeded) and took < 1.1, (error, took)
    assert 2 <= len(server.hits("/x")) <= 3  # retried while the deadline allowed, never past it


def test_media_type_families(server):
    server.script("/a", answer(200, b"RIFF....WAVE", content_type="audio/x-wav"))
    client = HttpClient(server.url, FAST)
    assert client.request("GET", "/a").expect(200, media_type="audio/*").body.startswith(b"RIFF")
    with pytest.raises(HttpProtocolError, match="expected media type audio/wav; got audio/x-wav"):
        client.request("GET", "/a").expect(200, media_type="audio/wav")
