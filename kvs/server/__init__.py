"""A kvs server: its flags and settings (`settings`), and the wiring and lifecycle that
start the store, the broker connection, replication and the gRPC services (`main`).

The top of the layers: it may import every other package, and none imports it.
"""
