"""Property tests (issue 13 family 3): whatever bytes and media type a server answers, the
checks give either the decoded value or the project's own error naming the endpoint."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from hydra_assets.domain.prompt_expansion import clean_completion
from resources.http import HttpAnswer, HttpError, server_message
from resources.llm import ChatCompletion

ENDPOINT = "http://llm.test/v1/chat/completions"
MEDIA = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/html", "", "audio/wav"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def answer_of(body: bytes, media: str, status: int = 200) -> HttpAnswer:
    return HttpAnswer("POST", ENDPOINT, status, {"Content-Type": media} if media else {}, body, 0.01)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()), media=MEDIA,
       status=st.sampled_from([200, 201, 400, 404, 500, 503]))
def test_any_answer_is_a_value_or_an_error_naming_the_endpoint(body, media, status):
    try:
        value = answer_of(body, media, status).json(ChatCompletion)
    except HttpError as exc:
        assert ENDPOINT in str(exc) and "expected" in str(exc)
    else:
        assert status == 200 and media.startswith("application/json")
        assert isinstance(value, ChatCompletion) and value.choices


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300))
def test_server_message_never_raises_and_is_bounded(body):
    assert len(server_message(body)) <= 300


@settings(max_examples=300, deadline=None)
@given(content=st.none() | st.text(max_size=400), limit=st.integers(1, 300))
def test_clean_completion_gives_a_bounded_text_or_a_reason(content, limit):
    text, reason = clean_completion(content, limit, one_line=True)
    assert (text is None) != (reason is None)
    if text is not None:
        assert 0 < len(text) <= limit and "\n" not in text and text == text.strip()
