"""Bodies of the routes the web console needs beyond Backend.AI's API: the folder explorer, definition checks,
the Model Store and chat conversations (docs/console-api.md). Requests refuse unknown fields, so a misspelt
field (or a token offered for storage) is a 400 naming it rather than silently dropped."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

from manager.api.fields import NAME_PATTERN, SERVICE_NAME_MAX, SERVICE_NAME_MIN
from manager.folders import MAX_PATH_LENGTH

MAX_URL_LENGTH = 2048
MAX_TITLE = 256
MAX_MODELS_PER_CONVERSATION = 8  # chat cards side by side
MAX_SYSTEM_PROMPT = 32 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=64 * 1024)


class _Resp(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- folder explorer ---------------------------------------------------------------------------------------------

class DirEntry(_Resp):
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mtime: datetime


class DirListing(_Resp):
    path: str = Field(description="the directory, relative to the folder root ('' is the root)")
    entries: list[DirEntry]
    total: int = Field(description="entries in the directory (as far as it was read)")
    offset: int
    limit: int
    truncated: bool = Field(description="the directory holds more than files.max_listed_entries entries")


class MkdirRequest(_Strict):
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    exist_ok: StrictBool = False
    parents: StrictBool = Field(default=True, description="create missing parent directories (as Backend.AI)")


class MoveRequest(_Strict):
    src: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    dst: str = Field(min_length=1, max_length=MAX_PATH_LENGTH)
    overwrite: StrictBool = Field(default=False, description="replace an existing file (never a directory)")


class PathResponse(_Resp):
    path: str


class DefinitionErrorItem(_Resp):
    field: str = Field(description="dotted field path, e.g. models.0.service.port; (yaml)/(toml) for syntax")
    reason: str
    line: int | None = Field(description="1-based line in the text, when it can be placed")


class ValidateDefinitionRequest(_Strict):
    path: str = Field(default="model-definition.yaml", min_length=1, max_length=MAX_PATH_LENGTH,
                      description="the file name (model-definition.yaml, model-definition.yml or "
                                  "service-definition.toml, in any directory) that says which schema applies")
    content: str = Field(max_length=256 * 1024)


class ValidateDefinitionResponse(_Resp):
    kind: Literal["model", "service"]
    valid: bool
    errors: list[DefinitionErrorItem]
    definition: dict[str, Any] | None = Field(
        None, description="a valid service-definition.toml as parsed: its root tables and its variant tables (the "
                          "launcher pre-fills its form from them)")


class OpenUploadRequest(_Strict):
    path: str = Field(min_length=1, max_length=MAX_PATH_LENGTH,
                      description="destination inside the folder; missing parent directories are created")
    size: StrictInt = Field(ge=0, description="total bytes (at most limits.max_upload_bytes)")
    force: StrictBool = Field(default=False, description="store a definition file even when it has errors")


class UploadStatus(_Resp):
    upload_id: uuid.UUID | None = None
    path: str
    size: int
    offset: int = Field(description="bytes received: where the next chunk starts")
    complete: bool
    max_chunk_bytes: int | None = None


# -- Model Store ---------------------------------------------------------------------------------------------------

class StoreCard(_Resp):
    folder_id: uuid.UUID
    name: str
    owner: uuid.UUID
    title: str | None
    description: str | None
    author: str | None
    version: str | None
    task: str | None
    category: str | None
    labels: list[str]
    license: str | None
    model_name: str | None
    runtime_variant: str
    image: str | None
    resources: dict[str, str]
    errors: list[DefinitionErrorItem] = Field(description="definition errors: Run this model would fail")


class StoreList(_Resp):
    items: list[StoreCard]
    total: int
    offset: int
    limit: int


class RunModelRequest(_Strict):
    name: str | None = Field(default=None, min_length=SERVICE_NAME_MIN, max_length=SERVICE_NAME_MAX,
                             pattern=NAME_PATTERN, description="default: derived from the folder's name")
    replicas: StrictInt = Field(default=1, ge=0)
    open_to_public: StrictBool = False
    runtime_variant: str | None = Field(default=None, max_length=32,
                                        description="default: the variant the service definition has a table for")


# -- conversations -------------------------------------------------------------------------------------------------

class ChatModel(_Strict):
    """One chat card's target: a service of the caller's, or a custom OpenAI-compatible base URL. A custom API's
    token is never stored (the console keeps it in memory); a ``token`` field here is refused."""

    service_id: uuid.UUID | None = None
    base_url: str | None = Field(default=None, max_length=MAX_URL_LENGTH, pattern=r"^https?://[^\s]+$")
    model: str | None = Field(default=None, max_length=256, description="the model name sent to the API")


class ChatParameters(_Strict):
    system_prompt: str | None = Field(default=None, max_length=MAX_SYSTEM_PROMPT)
    temperature: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=2)
    top_p: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1, le=1_000_000)


class ChatStats(_Strict):
    ttft_ms: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=86_400_000)
    tokens_per_second: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=10_000_000)
    tokens: StrictInt | None = Field(default=None, ge=0)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: StrictStr = Field(max_length=1024 * 1024)  # the configured conversations.max_content_chars applies
    model_index: StrictInt | None = Field(default=None, ge=0, lt=MAX_MODELS_PER_CONVERSATION,
                                          description="which of the conversation's models answered")
    stats: ChatStats | None = None


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("must not be blank")
    return value


class NewConversationRequest(_Strict):
    title: str = Field(default="New chat", min_length=1, max_length=MAX_TITLE)
    models: list[ChatModel] = Field(default_factory=list, max_length=MAX_MODELS_PER_CONVERSATION)
    parameters: ChatParameters = Field(default_factory=ChatParameters)
    messages: list[ChatMessage] = Field(default_factory=list)

    _title = field_validator("title")(_not_blank)


class UpdateConversationRequest(_Strict):
    """PATCH: each field given replaces the stored one; ``append`` adds messages at the end."""

    title: str | None = Field(default=None, min_length=1, max_length=MAX_TITLE)
    models: list[ChatModel] | None = Field(default=None, max_length=MAX_MODELS_PER_CONVERSATION)
    parameters: ChatParameters | None = None
    messages: list[ChatMessage] | None = None
    append: list[ChatMessage] | None = None

    _title = field_validator("title")(_not_blank)


class ConversationSummary(_Resp):
    id: uuid.UUID
    owner: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime
    message_count: int


class Conversation(ConversationSummary):
    models: list[ChatModel]
    parameters: ChatParameters
    messages: list[ChatMessage]


class ConversationList(_Resp):
    items: list[ConversationSummary]
    total: int
    offset: int
    limit: int
