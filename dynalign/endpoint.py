"""A chat call to any OpenAI-compatible endpoint, through the `openai` client.

The client already retries rate limits (429), 5xx, timeouts and dropped connections with
exponential backoff, honouring Retry-After: we only set how often. What is left after the
retries, and what retrying cannot fix (a wrong key, an unknown model), becomes one EndpointError
that names the role, the URL and what to do. Requests carry `X-Dynalign-Opt-Out`, so a dynalign
server used as an endpoint does not log them as user prompts to train on.
"""

from __future__ import annotations

import os

import openai

from dynalign.errors import EndpointError
from dynalign.keys import first_key

OPT_OUT_HEADER = {"X-Dynalign-Opt-Out": "1"}


class Endpoint:
    def __init__(self, role: str, url: str, model: str, api_key_env: str = "",
                 temperature: float = 1.0, max_tokens: int = 256, max_retries: int = 6,
                 timeout_s: float = 120.0, api_key: str | None = None):
        """`api_key`: sent instead of the variable's (the CLI's admin key, for this server)."""
        self.role, self.url, self.model = role, url, model
        self.api_key_env = api_key_env
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_retries = max_retries
        # a dynalign server's variable may list several keys: a client sends the first
        key = api_key or (first_key(os.environ.get(api_key_env)) if api_key_env else None)
        self.client = openai.OpenAI(base_url=url, api_key=key or "none", max_retries=max_retries,
                                    timeout=timeout_s, default_headers=OPT_OUT_HEADER)

    @classmethod
    def from_config(cls, role: str, endpoint, generate, default_url: str,
                    api_key: str | None = None) -> "Endpoint":
        return cls(role, endpoint.url or default_url, endpoint.model, endpoint.api_key_env,
                   endpoint.temperature, endpoint.max_tokens, generate.max_retries,
                   generate.timeout_s, api_key)

    def chat(self, messages: list[dict], seed: int | None = None) -> str:
        kwargs = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens}
        if self.temperature >= 0:
            kwargs["temperature"] = self.temperature
        if seed is not None:
            kwargs["seed"] = seed
        try:
            response = self.client.chat.completions.create(**kwargs)
        except (openai.APIStatusError, openai.APIConnectionError) as e:
            raise EndpointError(self._explain(e)) from None
        return response.choices[0].message.content or ""

    def _explain(self, error) -> str:
        where = f"{self.role} ({self.model} at {self.url})"
        if isinstance(error, openai.APITimeoutError):
            return f"{where}: no answer within the timeout, {self.max_retries} retries: {error}"
        if isinstance(error, openai.APIConnectionError):
            return f"{where}: cannot connect after {self.max_retries} retries: {error}"
        status = error.status_code
        if status in (401, 403):
            hint = (f"set {self.api_key_env} to a valid key" if self.api_key_env
                    else "set api_key_env to the variable that holds the key")
            return f"{where}: authentication failed (HTTP {status}): {hint}"
        if status == 404:
            return f"{where}: HTTP 404, no such model or path: {_message(error)}"
        if status == 429 or status >= 500:
            return f"{where}: still HTTP {status} after {self.max_retries} retries: {_message(error)}"
        return f"{where}: HTTP {status}: {_message(error)}"


def _message(error) -> str:
    body = error.body if isinstance(error.body, dict) else {}  # the client unwraps {"error": ...}
    return str(body.get("message") or error.message)
