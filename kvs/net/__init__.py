"""gRPC channels (`channel`: TLS and message limits in one place) and certificates (`tls`).

Imports only `kvs.limits`.
"""
