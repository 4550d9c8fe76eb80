"""Prompt expansion and dialogue variation against a local server speaking the OpenAI-style
chat-completions protocol (SPEC "LLM endpoint"), and when that server misbehaves."""

from __future__ import annotations

import json
import time

import dagster as dg
import pytest

from hydra_assets.domain import prompt_expansion as pe
from hydra_assets.domain.prompt_expansion import ExpansionCache, ExpansionRequest
from resources.llm import (
    DialogueVariator,
    OpenAIDialogueVariator,
    OpenAIPromptExpander,
    PromptExpander,
    TemplatePromptExpander,
    WriterTextVariator,
    llm_resources,
)
from tests.http_server import Handler, Recorded, ScriptedServer, answer, close_connection, drip_body, free_port_refusing

ROUTE = "/v1/chat/completions"


def chat_app(content=lambda body: None, model: str = "tabby-llama-3.1-8b"):
    """An OpenAI-compatible completions endpoint: refuses a body the protocol does not allow
    (400 in OpenAI's error shape), else answers ``content(body)`` or a deterministic rewrite."""

    def behave(handler: Handler, rec: Recorded) -> None:
        try:
            body = json.loads(rec.raw)
        except ValueError:
            return answer(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})(handler, rec)
        problems = []
        if not isinstance(body.get("model"), str):
            problems.append("model")
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or any(set(m) != {"role", "content"} for m in msgs):
            problems.append("messages")
        if not isinstance(body.get("max_tokens"), int):
            problems.append("max_tokens")
        if problems:
            return answer(400, {"error": {"message": f"invalid: {problems}", "type": "invalid_request_error"}})(handler, rec)
        text = content(body)
        if text is None:
            user = msgs[-1]["content"].splitlines()[-1].split(": ", 1)[1]
            text = f"{user}, soft window light, 85mm lens, seed {body.get('seed')}"
        answer(200, {
            "id": "chatcmpl-1", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        })(handler, rec)

    return behave


def requests_(n: int = 3) -> list[ExpansionRequest]:
    return [
        ExpansionRequest(slug="aria", asset_type="portrait", template_prompt=f"portrait of a woman, auburn hair, look {i}",
                         variation=f"variation {i}", seed=100 + i)
        for i in range(n)
    ]


class RecordingLog:
    def __init__(self):
        self.warnings: list[str] = []
        self.infos: list[str] = []

    def warning(self, message):
        self.warnings.append(message)

    def info(self, message):
        self.infos.append(message)


@pytest.fixture
def server():
    with ScriptedServer() as srv:
        yield srv


def expander(url, tmp_path, **kw) -> OpenAIPromptExpander:
    settings = dict(base_url=url, api_key="sk-test", timeout_s=2, backoff_base_s=0.05, backoff_cap_s=0.1,
                    cache_dir=str(tmp_path / "cache"), temperature=0.5)
    return OpenAIPromptExpander(**{**settings, **kw})


def test_expansion_sends_the_protocol_body_and_uses_the_answer(server, tmp_path):
    server.script(ROUTE, chat_app())
    log = RecordingLog()
    result = expander(server.url, tmp_path).expand(requests_(2), log=log)
    assert [e.source for e in result] == ["llm", "llm"]
    assert result[0].prompt == "portrait of a woman, auburn hair, look 0, soft window light, 85mm lens, seed 100"
    assert result[0].model == "tabby-llama-3.1-8b" and result[0].warning is None and not result[0].cached
    hit = server.hits(ROUTE)[0]
    body = hit.json
    assert body["model"] == "current" and body["max_tokens"] == 500 and body["seed"] == 100 and body["temperature"] == 0.5
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == pe.PROMPT_SYSTEM_TEMPLATE
    assert "Asset type: portrait" in body["messages"][1]["content"] and "Variation: variation 0" in body["messages"][1]["content"]
    assert hit.headers["Authorization"] == "Bearer sk-test"
    assert log.warnings == []


def test_rerun_asks_nothing_and_a_changed_input_asks_again(server, tmp_path):
    server.script(ROUTE, chat_app())
    first = expander(server.url, tmp_path).expand(requests_(3))
    assert len(server.hits(ROUTE)) == 3
    again = expander(server.url, tmp_path).expand(requests_(3))
    assert len(server.hits(ROUTE)) == 3  # cache hit: zero requests
    assert [e.prompt for e in again] == [e.prompt for e in first] and all(e.cached for e in again)
    assert [e.cache_key for e in again] == [e.cache_key for e in first]

    changed = [*requests_(2), ExpansionRequest("aria", "portrait", "portrait of a woman, auburn hair, look 2", "variation 2", seed=999)]
    expander(server.url, tmp_path).expand(changed)
    assert len(server.hits(ROUTE)) == 4  # only the new seed asked
    expander(server.url, tmp_path, model="other-model").expand(requests_(1))
    assert len(server.hits(ROUTE)) == 5  # another model is another key


def test_cache_dir_passed_by_the_asset_wins(server, tmp_path):
    server.script(ROUTE, chat_app())
    chosen = pe.cache_folder(tmp_path / "storage")
    assert chosen == tmp_path / "storage" / "cache" / "prompt_expansions"
    result = expander(server.url, tmp_path, cache_dir=None).expand(requests_(1), cache_dir=str(chosen))
    assert ExpansionCache(chosen).get(result[0].cache_key)["text"] == result[0].prompt


@pytest.mark.parametrize(
    "behaviour, reason",
    [
        (answer(500, {"error": {"message": "CUDA out of memory", "type": "server_error", "code": 500}}), "CUDA out of memory"),
        (answer(404, {"error": {"message": "model 'current' not found", "type": "invalid_request_error"}}), "model 'current' not found"),
        (answer(200, "<html>LiteLLM login</html>", content_type="text/html"), "media type application/json"),
        (answer(200, b'{"choices": [{"message": '), "undecodable JSON"),
        (answer(200, {"id": "x", "choices": []}), "choices: List should have at least 1 item"),
        (chat_app(lambda body: "   "), "content is empty"),
        (chat_app(lambda body: "word " * 1000), "over the limit of 2000"),
        (close_connection(), ROUTE),
    ],
    ids=["500", "404", "html", "truncated-json", "no-choices", "empty", "absurdly-long", "closed"],
)
def test_a_bad_answer_keeps_the_template_with_one_warning_per_batch(server, tmp_path, behaviour, reason):
    server.script(ROUTE, behaviour)
    log = RecordingLog()
    batch = requests_(3)
    result = expander(server.url, tmp_path).expand(batch, log=log)
    assert [e.prompt for e in result] == [r.template_prompt for r in batch]
    assert {e.source for e in result} == {"template"} and {e.model for e in result} == {"template"}
    assert all(e.warning and reason in e.warning for e in result), result[0].warning
    assert len(log.warnings) == 1 and "3 of 3 prompts kept their template" in log.warnings[0]
    assert not list((tmp_path / "cache").rglob("*.json"))  # fallbacks are not cached: a re-run asks again


def test_503_then_200_is_retried(server, tmp_path):
    server.script(ROUTE, answer(503, {"error": {"message": "loading model"}}), chat_app())
    result = expander(server.url, tmp_path).expand(requests_(1))
    assert result[0].source == "llm" and len(server.hits(ROUTE)) == 2


def test_slow_drip_and_down_endpoint_cost_one_deadline_per_batch(server, tmp_path):
    server.script(ROUTE, drip_body(interval_s=0.05))
    log = RecordingLog()
    start = time.monotonic()
    result = expander(server.url, tmp_path, timeout_s=1).expand(requests_(5), log=log)
    took = time.monotonic() - start
    assert took < 2.5, took  # one 1 s deadline, then the rest are not asked
    assert len(server.hits(ROUTE)) == 1
    assert all(e.source == "template" for e in result) and "1 s deadline" in result[0].warning
    assert "not asked" in result[1].warning and len(log.warnings) == 1

    refused = free_port_refusing()
    start = time.monotonic()
    down = expander(refused, tmp_path).expand(requests_(5), log=log)
    assert time.monotonic() - start < 2.0
    assert all(e.source == "template" and refused in e.warning for e in down)


def test_one_bad_item_does_not_sink_the_batch(server, tmp_path):
    def content(body):
        return "" if "look 1" in body["messages"][1]["content"] else None

    server.script(ROUTE, chat_app(content))
    result = expander(server.url, tmp_path).expand(requests_(3))
    assert [e.source for e in result] == ["llm", "template", "llm"]


def test_a_damaged_cache_file_is_a_miss_and_is_rewritten(server, tmp_path):
    server.script(ROUTE, chat_app())
    first = expander(server.url, tmp_path).expand(requests_(1))[0]
    path = ExpansionCache(tmp_path / "cache").path(first.cache_key)
    path.write_text('{"key": "trunc')
    again = expander(server.url, tmp_path).expand(requests_(1))[0]
    assert again.prompt == first.prompt and not again.cached and len(server.hits(ROUTE)) == 2
    assert json.loads(path.read_text())["text"] == first.prompt


def test_template_expander_is_honest():
    batch = requests_(2)
    result = TemplatePromptExpander().expand(batch)
    assert [(e.prompt, e.source, e.model, e.warning) for e in result] == [(r.template_prompt, "template", "template", None) for r in batch]
    assert result[0].cache_key != result[1].cache_key


def test_clean_completion_strips_labels_and_quotes():
    assert pe.clean_completion('Prompt: "a portrait,\n soft light"', 100, True) == ("a portrait, soft light", None)
    assert pe.clean_completion(None, 100, True)[1] == "the answer has no message content"


# --- dialogue ----------------------------------------------------------------------------------


def variator(url, tmp_path, **kw) -> OpenAIDialogueVariator:
    settings = dict(base_url=url, timeout_s=2, backoff_base_s=0.05, backoff_cap_s=0.1, cache_dir=str(tmp_path / "dlg"))
    return OpenAIDialogueVariator(**{**settings, **kw})


ASK = dict(instruction="make it warmer", text="Good morning. The tea is ready.", speaker="aria",
           context="Scene 1: the kitchen at dawn", seed=7)


def test_dialogue_variation_and_its_cache(server, tmp_path):
    server.script(ROUTE, chat_app(lambda body: '"Good morning, dear! Your tea is waiting."'))
    first = variator(server.url, tmp_path).vary(**ASK)
    assert (first.text, first.source, first.warning) == ("Good morning, dear! Your tea is waiting.", "llm", None)
    body = server.hits(ROUTE)[0].json
    assert body["messages"][0]["content"] == pe.DIALOGUE_SYSTEM_TEMPLATE and body["seed"] == 7
    assert "Instruction: make it warmer" in body["messages"][1]["content"] and "Speaker: aria" in body["messages"][1]["content"]
    again = variator(server.url, tmp_path).vary(**ASK)
    assert again.text == first.text and again.cached and len(server.hits(ROUTE)) == 1
    variator(server.url, tmp_path).vary(**{**ASK, "text": "Good evening."})
    assert len(server.hits(ROUTE)) == 2


@pytest.mark.parametrize("behaviour", [answer(502, "bad gateway", content_type="text/plain"), drip_body(interval_s=0.05),
                                       answer(200, {"choices": [{"message": {"content": None}}]})])
def test_dialogue_keeps_the_writers_text_when_the_endpoint_fails(server, tmp_path, behaviour):
    server.script(ROUTE, behaviour)
    log = RecordingLog()
    start = time.monotonic()
    result = variator(server.url, tmp_path, timeout_s=1).vary(**ASK, log=log)
    assert time.monotonic() - start < 2.5
    assert (result.text, result.source) == (ASK["text"], "writer")
    assert result.warning and server.url in result.warning and len(log.warnings) == 1


def test_writer_text_variator_keeps_the_line():
    assert WriterTextVariator().vary(**ASK).text == ASK["text"]


def test_resources_load_from_env_vars_in_an_asset(server, tmp_path, monkeypatch):
    """The cluster's wiring: settings from EnvVar, resources typed by their interfaces."""
    server.script(ROUTE, chat_app())
    monkeypatch.setenv("HYDRA_LLM_BASE_URL", server.url)
    monkeypatch.setenv("HYDRA_LLM_API_KEY", "sk-env")

    @dg.asset
    def expanded(prompt_expander: PromptExpander, dialogue: DialogueVariator) -> dg.MaterializeResult:
        result = prompt_expander.expand(requests_(1), cache_dir=str(tmp_path / "c"))
        line = dialogue.vary(**ASK, cache_dir=str(tmp_path / "d"))
        return dg.MaterializeResult(metadata={"source": result[0].source, "line": line.source})

    resources = llm_resources(dg.EnvVar("HYDRA_LLM_BASE_URL"), api_key=dg.EnvVar("HYDRA_LLM_API_KEY"), timeout_s=2)
    assert isinstance(resources["prompt_expander"], OpenAIPromptExpander)
    assert isinstance(resources["dialogue_variator"], OpenAIDialogueVariator)
    out = dg.materialize([expanded], resources={"prompt_expander": resources["prompt_expander"],
                                                "dialogue": resources["dialogue_variator"]})
    mat = out.asset_materializations_for_node("expanded")[0]
    assert mat.metadata["source"].value == "llm" and mat.metadata["line"].value == "llm"
    assert {h.headers["Authorization"] for h in server.hits(ROUTE)} == {"Bearer sk-env"}


def test_expansion_params_record_the_prompt_source(server, tmp_path):
    server.script(ROUTE, answer(500, {"error": {"message": "down"}}))
    fallback = expander(server.url, tmp_path).expand(requests_(1))[0]
    assert fallback.params()["prompt_source"] == "template" and "down" in fallback.params()["prompt_warning"]
    assert TemplatePromptExpander().expand(requests_(1))[0].params().keys() == {"prompt_source", "prompt_model", "prompt_cache_key"}


def test_without_an_endpoint_the_embedded_pair_is_chosen():
    resources = llm_resources(None, model="ignored")
    assert isinstance(resources["prompt_expander"], TemplatePromptExpander)
    assert isinstance(resources["dialogue_variator"], WriterTextVariator)
