"""Versions in memory or on disk: the multi-version store and its join (`store`), the SQLite
store and its group commit (`durable`), and the data directory that holds it (`datadir`).

Imports only `kvs.errors`. Nothing here knows gRPC, MQTT or the clock.
"""
