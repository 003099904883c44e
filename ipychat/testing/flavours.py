"""Provider flavours of `ipychat.testing.FakeOpenAIServer`: `FakeOpenAIServer(flavour="groq")`.

Each big provider's OpenAI-compatible endpoint differs from OpenAI's in ways a client meets
at once: where it lives, the shape of an error, whether rate-limit headers come, where the
usage of a stream is, which parameters are refused. A flavour reproduces the differences
its provider documents (or, where the documentation is silent, that its users report on the
wire); every quirk cites its source next to it. Anything a flavour does not name behaves as
OpenAI's API does (the default flavour, "openai").

Pure data and pure functions (no I/O); the engine (`ipychat.testing.server`) calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ipychat.testing.rules import Reject, dumps

__all__ = ["FLAVOURS", "Flavour", "flavour"]

# Google's status names for the HTTP codes a chat request meets (google.rpc.Code, as the
# Gemini API returns them: https://ai.google.dev/gemini-api/docs/troubleshooting).
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


@dataclass(frozen=True)
class Flavour:
    """What one provider's OpenAI-compatible endpoint does differently (defaults: OpenAI)."""

    name: str
    # Where the API lives: `base_url` is the server's root + this (OpenAI: /v1).
    prefix: str = "/v1"
    models: tuple[str, ...] = ("fake-model",)
    # "openai" {"error": {message, type, param, code}}, "gemini" [{"error": {code,
    # message, status}}], "mistral" and "vllm" {"object": "error", message, type, param,
    # code} at the top level, "openrouter" {"error": {code: <int>, message, metadata}},
    # "string" {"error": "<message>"} (LM Studio).
    error_shape: str = "openai"
    ratelimit_headers: bool = True  # x-ratelimit-* on every answer
    headers: tuple[tuple[str, str], ...] = ()  # sent with every answer
    usage_details: bool = True  # prompt_tokens_details / completion_tokens_details
    refused_params: tuple[str, ...] = ()  # request fields answered with a 422
    n_must_be_1: bool = False
    unknown_model_404: bool = False  # a model not in `models` is a 404
    # Streams: usage in the finish chunk even unasked (Mistral), Groq's `x_groq` there,
    # Azure's prompt_filter_results chunk first, OpenRouter's keep-alive comment first.
    usage_on_finish_chunk: bool = False
    x_groq: bool = False
    prompt_filter_chunk: bool = False
    keepalive_comment: str | None = None
    usage_timing: bool = False  # Groq's queue_time, prompt_time, ... in `usage`
    usage_chunk: bool = True  # a stream asked for include_usage sends the usage chunk
    # response_format types answered with a 400 (LM Studio takes json_schema and text only)
    refused_formats: tuple[str, ...] = ()

    def check(self, body: Mapping[str, Any], model: str, models: tuple[str, ...]) -> None:
        """Raise the `Reject` this provider answers a chat request OpenAI accepts with."""
        for name in self.refused_params:
            if name in body:  # pydantic's extra="forbid" answer, as Mistral sends it
                raise Reject(422, f"Extra inputs are not permitted: body.{name}", param=name,
                             code="extra_forbidden")  # fmt: skip
        kind = (body.get("response_format") or {}).get("type")
        if kind in self.refused_formats:
            raise Reject(400, "'response_format.type' must be 'json_schema' or 'text'",
                         param="response_format")  # fmt: skip
        if self.n_must_be_1 and body.get("n", 1) != 1:
            raise Reject(400, "n: Must be exactly 1.", param="n", code="invalid_value")
        if self.unknown_model_404 and model not in models:
            message = (
                f"The model `{model}` does not exist."
                if self.error_shape == "vllm"
                else f'model "{model}" not found, try pulling it first'
            )
            raise Reject(404, message, "not_found_error", "model_not_found", "model")

    def usage(self, prompt: int, completion: int) -> dict[str, Any]:
        """A reply's `usage` object as this provider writes it."""
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self.usage_details:
            usage["prompt_tokens_details"] = {"cached_tokens": 0}
            usage["completion_tokens_details"] = {"reasoning_tokens": 0}
        if self.usage_timing:  # Groq's seconds; the fake takes none
            usage.update(queue_time=0.0, prompt_time=0.0, completion_time=0.0, total_time=0.0)
        return usage

    def stream_preamble(self) -> list[bytes]:
        """What a stream sends before its first chunk: OpenRouter's keep-alive comment (a
        line clients must skip), Azure's content-filter verdict on the prompt."""
        blocks: list[bytes] = []
        if self.keepalive_comment:
            blocks.append(self.keepalive_comment.encode() + b"\n\n")
        if self.prompt_filter_chunk:
            safe = {"filtered": False, "severity": "safe"}
            results = {k: safe for k in ("hate", "self_harm", "sexual", "violence")}
            chunk = {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                     "prompt_filter_results": [{"prompt_index": 0,
                                                "content_filter_results": results}]}  # fmt: skip
            blocks.append(b"data: " + dumps(chunk) + b"\n\n")
        return blocks

    def finish_extras(self, usage: dict[str, Any], request_id: str) -> dict[str, Any]:
        """Fields added to a stream's finish_reason chunk (Mistral's usage, Groq's x_groq)."""
        extras: dict[str, Any] = {}
        if self.usage_on_finish_chunk:
            extras["usage"] = usage
        if self.x_groq:
            extras["x_groq"] = {"id": request_id, "usage": usage}
        return extras

    def error(self, status: int, error: Mapping[str, Any]) -> Any:
        """OpenAI's error object (`{"message", "type", "param", "code"}`) in this shape."""
        message = error.get("message")
        if self.error_shape == "gemini":
            status_name = _GOOGLE_STATUS.get(status, "UNKNOWN")
            return [{"error": {"code": status, "message": message, "status": status_name}}]
        if self.error_shape in ("mistral", "vllm"):
            kind = error.get("type")
            if self.error_shape == "vllm":  # the exception's name, the code an int
                return {"object": "error", "message": message, "type": _VLLM_TYPES.get(status,
                        "BadRequestError"), "param": error.get("param"), "code": status}  # fmt: skip
            if status == 429:  # https://github.com/cline/cline/issues/9085
                return {"object": "error", "message": "Rate limit exceeded",
                        "type": "rate_limited", "param": None, "code": "1300"}  # fmt: skip
            return {"object": "error", "message": message, "type": kind,
                    "param": error.get("param"), "code": error.get("code")}  # fmt: skip
        if self.error_shape == "openrouter":
            return {"error": {"code": status, "message": message, "metadata": {}}}
        if self.error_shape == "string":
            return {"error": message}
        return {"error": dict(error)}


_VLLM_TYPES = {404: "NotFoundError", 500: "InternalServerError", 503: "ServiceUnavailableError"}

FLAVOURS: dict[str, Flavour] = {
    "openai": Flavour("openai"),
    # https://platform.claude.com/docs/en/api/openai-sdk (base URL https://api.anthropic.com/v1/):
    # response_format, seed, logprobs, presence/frequency_penalty, user, ... "Ignored"
    # (answered, not refused: the fake ignores them too); "n: Must be exactly 1";
    # usage.prompt_tokens_details / completion_tokens_details "Always empty"; headers:
    # x-ratelimit-* and retry-after "Fully supported", openai-version "Always 2020-10-01".
    # max_tokens is "Fully supported" and the page's own quick start sends none, so the
    # fake does not require it (the native Messages API does).
    "anthropic": Flavour(
        "anthropic",
        models=("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"),
        headers=(("openai-version", "2020-10-01"),),
        usage_details=False,
        n_must_be_1=True,
    ),
    # https://ai.google.dev/gemini-api/docs/openai: base URL
    # https://generativelanguage.googleapis.com/v1beta/openai/, Bearer GEMINI_API_KEY.
    # Errors come as a JSON *list* of Google error objects, e.g. a 429
    # [{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check
    # quota).", "status": "RESOURCE_EXHAUSTED"}}]
    # (https://github.com/n4ze3m/page-assist/issues/406). Its rate-limit page
    # (https://ai.google.dev/gemini-api/docs/rate-limits) names no response headers.
    "gemini": Flavour(
        "gemini",
        prefix="/v1beta/openai",
        models=("gemini-2.5-flash", "gemini-2.5-pro"),
        error_shape="gemini",
        ratelimit_headers=False,
    ),
    # https://docs.mistral.ai/api/ (base URL https://api.mistral.ai/v1). Errors at the top
    # level: {"object": "error", "message", "type", "param", "code"}; a field it does not
    # know is a 422 "Extra inputs are not permitted" (max_completion_tokens:
    # https://github.com/editor-code-assistant/eca/issues/231; stream_options:
    # https://github.com/dnakov/anon-kode/issues/53); a 429 is {"object": "error",
    # "message": "Rate limit exceeded", "type": "rate_limited", "code": "1300"}
    # (https://github.com/cline/cline/issues/9085), without x-ratelimit-* headers. The
    # usage of a stream comes in its last chunk, unasked
    # (https://github.com/mistralai/client-python/issues/40,
    # https://github.com/davidmigloz/langchain_dart/pull/795).
    "mistral": Flavour(
        "mistral",
        models=("mistral-small-latest", "mistral-large-latest"),
        error_shape="mistral",
        ratelimit_headers=False,
        refused_params=("max_completion_tokens", "stream_options"),
        usage_on_finish_chunk=True,
    ),
    # https://console.groq.com/docs/openai (base URL https://api.groq.com/openai/v1);
    # https://console.groq.com/docs/rate-limits: x-ratelimit-* on every answer,
    # retry-after only on a 429. A stream's finish chunk carries `x_groq.usage` with
    # timings (https://github.com/vercel/ai/issues/1651), and include_usage adds the usage
    # chunk too (https://github.com/Portkey-AI/gateway/issues/1338).
    "groq": Flavour(
        "groq",
        prefix="/openai/v1",
        models=("llama-3.3-70b-versatile", "llama-3.1-8b-instant"),
        x_groq=True,
        usage_timing=True,
    ),
    # https://openrouter.ai/docs/api-reference/errors: {"error": {"code": <HTTP status>,
    # "message", "metadata"}}; https://openrouter.ai/docs/api-reference/streaming: SSE
    # comments (": OPENROUTER PROCESSING") keep the connection alive, "which can be
    # safely ignored". Base URL https://openrouter.ai/api/v1, models as vendor/model.
    "openrouter": Flavour(
        "openrouter",
        prefix="/api/v1",
        models=("openai/gpt-4o-mini", "anthropic/claude-sonnet-4.5"),
        error_shape="openrouter",
        ratelimit_headers=False,
        keepalive_comment=": OPENROUTER PROCESSING",
    ),
    # https://docs.together.ai/docs/openai-api-compatibility (base URL
    # https://api.together.xyz/v1): OpenAI's protocol with open models' names.
    "together": Flavour(
        "together",
        models=("meta-llama/Llama-3.3-70B-Instruct-Turbo", "Qwen/Qwen2.5-7B-Instruct-Turbo"),
    ),
    # Azure OpenAI: the v1 API under /openai/v1
    # (https://learn.microsoft.com/azure/ai-foundry/openai/api-version-lifecycle; the older
    # deployment path with api-version is served by every flavour), and content filtering:
    # a stream opens with a chunk of `prompt_filter_results` and no choices
    # (https://learn.microsoft.com/azure/ai-foundry/openai/concepts/content-filter).
    "azure": Flavour(
        "azure", prefix="/openai/v1", models=("gpt-4o-mini",), prompt_filter_chunk=True
    ),
    # https://github.com/ollama/ollama/blob/main/docs/openai.md (base URL
    # http://localhost:11434/v1): local, no rate limits and no such headers; an unknown
    # model is a 404 ("model ... not found").
    "ollama": Flavour(
        "ollama",
        models=("llama3.2", "qwen2.5:0.5b"),
        ratelimit_headers=False,
        unknown_model_404=True,
    ),
    # https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html: no rate-limit
    # headers; errors {"object": "error", "message", "type": "BadRequestError", "param",
    # "code": 400} (vllm.entrypoints.openai.protocol.ErrorResponse); a model it does not
    # serve is a 404 "The model `x` does not exist.".
    "vllm": Flavour(
        "vllm",
        models=("Qwen/Qwen2.5-0.5B-Instruct",),
        error_shape="vllm",
        ratelimit_headers=False,
        unknown_model_404=True,
    ),
    # https://lmstudio.ai/docs/api/openai-api (base URL http://localhost:1234/v1): local, no
    # rate-limit headers; errors as {"error": "<message>"}, and response_format json_object
    # refused ("'response_format.type' must be 'json_schema' or 'text'":
    # https://github.com/Zazza/sd-ai/issues/2); a stream carries no usage even when asked
    # (https://github.com/lmstudio-ai/lmstudio-bug-tracker/issues/713).
    "lmstudio": Flavour(
        "lmstudio",
        models=("qwen2.5-7b-instruct",),
        error_shape="string",
        ratelimit_headers=False,
        usage_chunk=False,
        refused_formats=("json_object",),
    ),
}


def flavour(name: str | Flavour) -> Flavour:
    """The named flavour, or a clear error naming the ones there are."""
    if isinstance(name, Flavour):
        return name
    try:
        return FLAVOURS[name]
    except KeyError:
        raise ValueError(
            f"unknown flavour {name!r}; use one of {', '.join(sorted(FLAVOURS))}"
        ) from None
