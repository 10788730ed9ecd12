"""SOIP callbacks: the HTTP receiver, the durable store, and payload parsing. Kept import-light: the
sensor and trigger import :mod:`.store` only, never FastAPI."""
