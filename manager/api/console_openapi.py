"""The OpenAPI entries of the console's routes (folder explorer, definition checks, Model Store, conversations),
merged into ``/openapi.json`` by manager/api/openapi.py; docs/console-api.md describes them in prose."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from manager.api import console_schemas as c
from manager.api import schemas as s

F = "/folders/{name}"
U = "/folders/{name}/uploads/{upload_id}"
C = "/conversations/{conversation_id}"

OPERATIONS: list[tuple[str, str, str, type[BaseModel] | None, type[BaseModel] | None, int]] = [
    ("get", f"{F}/files", "List one directory of the folder, paginated (?path=, ?offset=, ?limit=)", None,
     c.DirListing, 200),
    ("delete", f"{F}/files", "Delete a file, link or directory (?path=, ?recursive=true for a non-empty one)", None,
     None, 204),
    ("get", f"{F}/download", "Download one file, streamed (?path=)", None, None, 200),
    ("post", f"{F}/mkdir", "Create a directory (and its parents)", c.MkdirRequest, c.PathResponse, 201),
    ("post", f"{F}/move-file", "Rename or move a file or directory inside the folder", c.MoveRequest,
     c.PathResponse, 200),
    ("put", f"{F}/content", "Save a small file (the definition editor); definition files with errors are refused "
     "unless ?force=true", None, None, 200),
    ("post", f"{F}/definitions/validate", "Check a model-definition.yaml or service-definition.toml text: errors "
     "with field path and line", c.ValidateDefinitionRequest, c.ValidateDefinitionResponse, 200),
    ("post", f"{F}/uploads", "Open a resumable chunked upload of one file", c.OpenUploadRequest, c.UploadStatus,
     201),
    ("get", U, "Where an open upload continues (its offset)", None, c.UploadStatus, 200),
    ("put", U, "Send one chunk starting at ?offset=; the last one moves the file into place", None,
     c.UploadStatus, 200),
    ("delete", U, "Cancel an open upload", None, None, 204),
    ("get", "/model-store", "Model folders holding model-definition.yaml and service-definition.toml, as cards",
     None, c.StoreList, 200),
    ("post", "/model-store/{folder_id}/run", "Run this model: create a service from the folder's definitions",
     c.RunModelRequest, s.ServeInfo, 201),
    ("get", "/conversations", "The caller's chat conversations, newest first", None, c.ConversationList, 200),
    ("post", "/conversations", "Save a new conversation", c.NewConversationRequest, c.Conversation, 201),
    ("get", C, "One conversation with its messages", None, c.Conversation, 200),
    ("patch", C, "Rename, replace models, parameters or messages, or append messages",
     c.UpdateConversationRequest, c.Conversation, 200),
    ("delete", C, "Delete a conversation", None, None, 204),
    ("get", f"{C}/export", "Download a conversation as JSON or Markdown (?format=)", None, None, 200),
]

_PAGE = [
    {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0, "default": 0}},
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
]
_PATH = {"name": "path", "in": "query", "required": True, "schema": {"type": "string", "maxLength": 1024},
         "description": "relative to the folder root: no '..', no leading '/', no NUL or backslash"}
_FORCE = {"name": "force", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
          "description": "store a definition file even when it has errors"}

QUERY_PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("get", f"{F}/files"): [{**_PATH, "required": False, "description": "the directory ('' or absent: the root)"},
                            *_PAGE],
    ("delete", f"{F}/files"): [_PATH, {"name": "recursive", "in": "query", "required": False,
                                       "schema": {"type": "boolean", "default": False}}],
    ("get", f"{F}/download"): [_PATH],
    ("put", f"{F}/content"): [_PATH, _FORCE],
    ("put", U): [{"name": "offset", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 0},
                  "description": "where this chunk starts; must equal the upload's current offset"}],
    ("get", "/model-store"): _PAGE,
    ("get", "/conversations"): [*_PAGE, {"name": "all", "in": "query", "required": False,
                                         "schema": {"type": "string", "enum": ["true", "false"]},
                                         "description": "true: every conversation the caller may see (admins)"}],
    ("get", f"{C}/export"): [{"name": "format", "in": "query", "required": False,
                              "schema": {"type": "string", "enum": ["json", "markdown"], "default": "json"}}],
}

_BYTES = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("put", f"{F}/content"): {"required": True, "content": {"application/octet-stream": _BYTES},
                              "description": "the file's bytes (at most files.max_content_bytes)"},
    ("put", U): {"required": True, "content": {"application/octet-stream": _BYTES},
                 "description": "the chunk's bytes (at most files.max_chunk_bytes)"},
}
RESPONSE_CONTENT: dict[tuple[str, str], dict[str, Any]] = {
    ("get", f"{F}/download"): {"application/octet-stream": _BYTES},
    ("get", f"{C}/export"): {"application/json": {"schema": {"type": "object"}},
                             "text/markdown": {"schema": {"type": "string"}}},
}
CONFLICTS = {("post", f"{F}/mkdir"), ("post", f"{F}/move-file"), ("delete", f"{F}/files"),
             ("put", f"{F}/content"), ("post", f"{F}/uploads"), ("put", U), ("post", "/model-store/{folder_id}/run"),
             ("post", "/conversations"), ("patch", C)}
