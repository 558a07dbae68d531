"""kvs: a replicated, multi-version key-value store over gRPC and MQTT."""
