"""The web console (docs/console.md): static pages plus the manager's own REST API under ``/api/``, authenticated
by server-side cookie sessions instead of keypair signatures."""
