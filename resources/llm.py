"""The studio's LLM (SPEC "LLM endpoint"): prompt expansion and procedural dialogue.

Two resource interfaces, each with an embedded default that says what it is and an
OpenAI-compatible implementation (TabbyAPI behind LiteLLM on the cluster):

- :class:`PromptExpander` → :class:`TemplatePromptExpander` (the DNA template prompt, as is),
  :class:`OpenAIPromptExpander`;
- :class:`DialogueVariator` → :class:`WriterTextVariator` (the writer's line, as is),
  :class:`OpenAIDialogueVariator`.

Both OpenAI implementations share :class:`OpenAIChat` (endpoint settings, the transport, the
content-keyed cache folder); :func:`llm_resources` builds the pair from one set of settings.

**Why plain HTTP through :mod:`resources.http` and not the ``openai`` client.** The client's
``timeout`` is an ``httpx.Timeout``: per phase, with the read timeout applying to each chunk,
so a server that drips a byte a second holds a call for ever (measured: ``openai.OpenAI(
timeout=1.0, max_retries=0)`` against a server dripping 60 bytes at 0.1 s returned after 6.1 s,
with a raw ``JSONDecodeError`` for the non-JSON body); its retries have their own
backoff (0.5-8 s) and status list. Wrapping it for a real deadline would need the same
watchdog that :mod:`resources.http` already is, and issue 14 asks for one retry mechanism.
The protocol is one POST with a small JSON body, checked here with pydantic.

**Failure is never fatal.** An endpoint that is down, slow past ``timeout_s`` (the whole
call, retries included), answers 4xx/5xx, malformed JSON, an empty or over-long content,
gives back the text it was given with ``warning`` set; after a connection failure or a
deadline the endpoint is not asked again for ``pause_after_failure_s`` (one dead server
costs one timeout per batch, not one per image). Only answers from the LLM are cached.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Sequence
from typing import Any

import dagster as dg
import pydantic
from pydantic import Field, PrivateAttr

from hydra_assets.domain import prompt_expansion as pe
from hydra_assets.domain.prompt_expansion import Expansion, ExpansionCache, ExpansionRequest, Variation
from resources.http import HttpClient, HttpDeadlineExceeded, HttpError, HttpPolicy, HttpUnavailable

log_ = logging.getLogger(__name__)

CHAT_ROUTE = "/v1/chat/completions"


# --- the protocol's answer -------------------------------------------------------------------


class _Message(pydantic.BaseModel):
    role: str | None = None
    content: str | None = None


class _Choice(pydantic.BaseModel):
    index: int = 0
    message: _Message
    finish_reason: str | None = None


class ChatCompletion(pydantic.BaseModel):
    """``{id, model, choices: [{index, message: {role, content}, finish_reason}], usage}``."""

    id: str | None = None
    model: str | None = None
    choices: list[_Choice] = Field(min_length=1)


class LlmAnswerError(HttpError):
    """The endpoint answered the protocol, but the content is not usable (empty, too long)."""


# --- the shared client -----------------------------------------------------------------------


class OpenAIChat(dg.ConfigurableResource):
    """Settings and transport of an OpenAI-compatible ``POST {base}/v1/chat/completions``.

    On the cluster: ``base_url=dg.EnvVar("HYDRA_LLM_BASE_URL")``, ``model`` from
    ``HYDRA_LLM_MODEL`` (the seed's ``current``), ``api_key=dg.EnvVar("HYDRA_LLM_API_KEY")``.
    """

    base_url: str = Field(description="The server's root, without /v1, e.g. http://litellm.ai:4000")
    model: str = Field(default="current", description="The model name sent (SPEC: 'current').")
    api_key: str | None = Field(default=None, description="Bearer token; from dg.EnvVar('HYDRA_LLM_API_KEY').")
    timeout_s: float = Field(default=30.0, gt=0, description="Overall deadline of one completion, retries included.")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10, description="SPEC: at most 3 (connection errors, 429, 502-504).")
    backoff_base_s: float = Field(default=1.0, ge=0)
    backoff_cap_s: float = Field(default=10.0, ge=0)
    max_tokens: int = Field(default=500, ge=1, le=32768, description="SPEC: the seed's flow sends 500.")
    temperature: float = Field(default=0.7, ge=0, le=2)
    cache_dir: str | None = Field(default=None, description="Folder of cached answers; the caller may pass its own.")
    pause_after_failure_s: float = Field(
        default=120.0, ge=0, description="After a connection failure or deadline, fall back without asking for this long."
    )

    _client: HttpClient | None = PrivateAttr(default=None)
    _down: tuple[float, str] | None = PrivateAttr(default=None)

    def http(self) -> HttpClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            policy = HttpPolicy(
                connect_timeout_s=min(self.connect_timeout_s, self.timeout_s),
                read_timeout_s=self.timeout_s,
                deadline_s=self.timeout_s,
                max_retries=self.max_retries,
                backoff_base_s=self.backoff_base_s,
                backoff_cap_s=self.backoff_cap_s,
                max_body_bytes=4 * 1024 * 1024,
            )
            # A completion has no side effect on the server: repeating the POST is safe.
            self._client = HttpClient(self.base_url, policy, name="LLM", retry_post=True, headers=headers)
        return self._client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def cache(self, cache_dir: str | None) -> ExpansionCache:
        return ExpansionCache(cache_dir or self.cache_dir)

    def remember(self, cache: ExpansionCache, key: str, text: str, model: str, about: dict[str, Any], log: Any) -> None:
        """Cache an answer; a cache that cannot be written costs a re-ask next time, not this answer."""
        try:
            cache.put(key, text, model, about)
        except OSError as exc:
            _warn(log, f"LLM answer not cached at {cache.path(key)}: {exc}")

    def complete(self, chat: list[dict[str, str]], seed: int, max_chars: int, one_line: bool) -> tuple[str, str]:
        """(text, model) of one completion, or an :class:`HttpError` naming what went wrong."""
        if self._down is not None:
            since, why = self._down
            if time.monotonic() - since < self.pause_after_failure_s:
                raise HttpUnavailable(self.http().endpoint(CHAT_ROUTE), "a reachable endpoint", f"not asked: {why}")
            self._down = None
        body = {
            "model": self.model,
            "messages": chat,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": seed,
        }
        try:
            answer = self.http().request("POST", CHAT_ROUTE, json=body)
            completion = answer.json(ChatCompletion, expected="a chat completion {choices: [{message: {content}}]}")
        except (HttpUnavailable, HttpDeadlineExceeded) as exc:
            self._down = (time.monotonic(), str(exc))
            raise
        choice = completion.choices[0]
        text, reason = pe.clean_completion(choice.message.content, max_chars, one_line)
        if text is None:
            raise LlmAnswerError(answer.where, "a usable completion", reason or "nothing", answer.status)
        return text, completion.model or self.model


def _warn(log: Any, message: str) -> None:
    (log or log_).warning(message)


# --- prompt expansion ------------------------------------------------------------------------


class PromptExpander(dg.ConfigurableResource, abc.ABC):
    """Turns the DNA template prompt of each image into the prompt the image backend gets."""

    @abc.abstractmethod
    def expand(self, requests: Sequence[ExpansionRequest], log: Any = None, cache_dir: str | None = None) -> list[Expansion]:
        """One :class:`Expansion` per request, in order; never raises for a single item."""


class TemplatePromptExpander(PromptExpander):
    """The embedded default: no LLM; each image keeps its template prompt (``source='template'``)."""

    def expand(self, requests: Sequence[ExpansionRequest], log: Any = None, cache_dir: str | None = None) -> list[Expansion]:
        return [
            Expansion(r.template_prompt, "template", "template", pe.prompt_key(r, "template", 0, 0.0)) for r in requests
        ]


class OpenAIPromptExpander(PromptExpander, OpenAIChat):
    """Prompt expansion through the studio's LLM (seed 000, "Expand Prompts via TabbyAPI")."""

    max_prompt_chars: int = Field(default=2000, ge=50, description="A longer answer is refused (template kept).")

    def expand(self, requests: Sequence[ExpansionRequest], log: Any = None, cache_dir: str | None = None) -> list[Expansion]:
        cache = self.cache(cache_dir)
        results: list[Expansion] = []
        failures: list[str] = []
        asked = reused = 0
        for request in requests:
            key = pe.prompt_key(request, self.model, self.max_tokens, self.temperature)
            hit = cache.get(key)
            if hit is not None:
                reused += 1
                results.append(Expansion(hit["text"], "llm", str(hit.get("model") or self.model), key, None, cached=True))
                continue
            chat = pe.messages(pe.PROMPT_SYSTEM_TEMPLATE, pe.prompt_user_message(request))
            try:
                asked += 1
                text, model = self.complete(chat, request.seed, self.max_prompt_chars, one_line=True)
            except HttpError as exc:
                warning = f"prompt expansion failed, template prompt kept: {exc}"
                failures.append(f"{request.slug}/{request.asset_type}: {exc}")
                results.append(Expansion(request.template_prompt, "template", "template", key, warning))
                continue
            self.remember(cache, key, text, model, {"slug": request.slug, "asset_type": request.asset_type}, log)
            results.append(Expansion(text, "llm", model, key))
        if failures:
            _warn(
                log,
                f"prompt expansion: {len(failures)} of {len(requests)} prompts kept their template "
                f"(first: {failures[0]})",
            )
        (log or log_).info(f"prompt expansion: {reused} from cache, {asked} asked of {self.base_url}")
        return results


# --- procedural dialogue ---------------------------------------------------------------------


class DialogueVariator(dg.ConfigurableResource, abc.ABC):
    """Writes the variation a chapter line asks for (``~ ask: <instruction>``)."""

    @abc.abstractmethod
    def vary(
        self, instruction: str, text: str, speaker: str, context: str = "", seed: int = 0,
        log: Any = None, cache_dir: str | None = None,
    ) -> Variation:
        """The line to voice; the writer's ``text`` when no variation can be had. Never raises."""


class WriterTextVariator(DialogueVariator):
    """The embedded default: no LLM; every line is the writer's text (``source='writer'``)."""

    def vary(
        self, instruction: str, text: str, speaker: str, context: str = "", seed: int = 0,
        log: Any = None, cache_dir: str | None = None,
    ) -> Variation:
        return Variation(text, "writer")


class OpenAIDialogueVariator(DialogueVariator, OpenAIChat):
    """Dialogue variations through the studio's LLM, cached by content key."""

    max_line_chars: int = Field(default=600, ge=20, description="A longer answer is refused (writer's text kept).")

    def vary(
        self, instruction: str, text: str, speaker: str, context: str = "", seed: int = 0,
        log: Any = None, cache_dir: str | None = None,
    ) -> Variation:
        key = pe.dialogue_key(instruction, text, speaker, context, seed, self.model, self.max_tokens, self.temperature)
        cache = self.cache(cache_dir)
        hit = cache.get(key)
        if hit is not None:
            return Variation(hit["text"], "llm", None, str(hit.get("model") or self.model), key, cached=True)
        chat = pe.messages(pe.DIALOGUE_SYSTEM_TEMPLATE, pe.dialogue_user_message(instruction, text, speaker, context))
        try:
            line, model = self.complete(chat, seed, self.max_line_chars, one_line=True)
        except HttpError as exc:
            warning = f"dialogue variation failed, writer's text kept: {exc}"
            _warn(log, f"{speaker}: {warning}")
            return Variation(text, "writer", warning, "writer", key)
        self.remember(cache, key, line, model, {"speaker": speaker, "seed": seed}, log)
        return Variation(line, "llm", None, model, key)


def llm_resources(base_url: Any = None, **settings: Any) -> dict[str, dg.ConfigurableResource]:
    """The two LLM resources under their Definitions keys, from one set of settings: the
    embedded pair when no endpoint is configured (``base_url`` None or empty), else the
    OpenAI-compatible pair (``base_url``/``api_key`` may be ``dg.EnvVar``s)."""
    if not base_url:
        return {"prompt_expander": TemplatePromptExpander(), "dialogue_variator": WriterTextVariator()}
    return {
        "prompt_expander": OpenAIPromptExpander(base_url=base_url, **settings),
        "dialogue_variator": OpenAIDialogueVariator(base_url=base_url, **settings),
    }
