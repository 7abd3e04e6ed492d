"""The service (endpoint) domain: what the ``/services`` API and the GraphQL resolvers do, without HTTP.

Functions here take plain values (ids, pydantic request models, the caller) and a session factory, apply the
rules (ownership, limits, lifecycle) and return dataclasses or rows; the handlers in ``manager.api`` parse the
request, call one of them and render the result with ``manager.api.views``. Nothing here imports
``manager.api`` or aiohttp (tests/test_import_graph.py checks it). Errors are ``common.errors`` exceptions,
which the HTTP layer turns into problem+json.
"""
