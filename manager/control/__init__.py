"""Control loops (ARCHITECTURE §3): pure decision functions plus the thin I/O that applies them."""
