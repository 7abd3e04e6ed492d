"""Control loops (docs/architecture.md, Control loops): pure decision functions plus the thin I/O that applies them."""
