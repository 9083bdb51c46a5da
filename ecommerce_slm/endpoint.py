"""Reaching an OpenAI-compatible endpoint the way the openai client does, without leaking the OpenAI key.

Shared by the API baselines (eval_api) and the metaprompt data backend. The URL: the params value when
set, else OPENAI_BASE_URL, else OpenAI's. The key: from the variable the params name when they name
one; else OPENAI_API_KEY, but only for OpenAI's own host. A local or third-party server never gets the
OpenAI key unless the user named OPENAI_API_KEY for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

from ecommerce_slm.cli import ProjectError

OPENAI_URL = "https://api.openai.com/v1"
NO_KEY = "not-needed"  # the openai client insists on a key; local servers ignore it


class EndpointError(ProjectError, RuntimeError):
    pass


@dataclass(frozen=True)
class Endpoint:
    url: str
    key: str | None
    key_variable: str  # where the key came from ("" when none applies)

    @property
    def is_openai(self) -> bool:
        return urlparse(self.url).hostname == "api.openai.com"

    def client(self, timeout_seconds: float):
        import openai

        return openai.OpenAI(base_url=self.url, api_key=self.key or NO_KEY, timeout=timeout_seconds, max_retries=0)


def resolve_endpoint(base_url: str, api_key_env: str) -> Endpoint:
    url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
    if api_key_env:
        return Endpoint(url, os.environ.get(api_key_env) or None, api_key_env)
    if urlparse(url).hostname == "api.openai.com":
        return Endpoint(url, os.environ.get("OPENAI_API_KEY") or None, "OPENAI_API_KEY")
    return Endpoint(url, None, "")


def api_error(err: Exception, where: str) -> EndpointError:
    """One line for an error the openai client raised: the HTTP status and the server's own message."""
    status = getattr(err, "status_code", None)
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    message = message.strip().splitlines()[0][:300] if message.strip() else type(err).__name__
    return EndpointError(f"{where}: {f'HTTP {status}: ' if status else ''}{message}")
