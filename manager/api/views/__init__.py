"""One serializer per resource: how an endpoint, a route and a token look on the wire, for REST and GraphQL.

Each module computes the derived values once (the endpoint's status, which routes are active, a route's
Backend.AI status) and shapes them for each API; handlers and resolvers call these and never build the JSON
themselves. The REST shapes are Backend.AI's (docs/architecture.md, Service API); the GraphQL ones feed the
schema of ``manager.api.gql`` (its scalars turn UUIDs and datetimes into text).
"""
