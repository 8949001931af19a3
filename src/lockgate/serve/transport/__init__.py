"""Transports: HTTP (bare ASGI infer route + starlette for the rest), gRPC, and their codecs."""
