"""The KeyValueStore gRPC service (`kvstore`: validate, call the store, reply; one error
table) and the store wrapper that hands each accepted write to replication (`replicated`).

May import `kvs.storage` and the shared modules; never replication or MQTT.
"""
