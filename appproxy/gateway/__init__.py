"""The OpenAI-compatible gateway of the app proxy (docs/gateway.md): one port, the request's ``model`` picks the
endpoint pool, tenant API keys, per-key rate limits.

Modules: :mod:`.errors` (OpenAI-style error bodies), :mod:`.keys` (the published keys), :mod:`.catalog` (model
name → endpoints, what a key may use), :mod:`.request` (validating a request body), :mod:`.usage` (reading and
stripping usage in answers), :mod:`.limits` (pure rate-limit decisions), :mod:`.limiter` (their counters in
memory or Redis), :mod:`.listener` (the HTTP server tying them together).
"""
