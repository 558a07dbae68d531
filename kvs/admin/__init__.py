"""The Admin service (`service`: a server's view of its own replica, read through the
`Replica` protocol) and, apart, the admin command line (`cli`, `scripts/admin.sh`).

The command line is a gRPC client only: it imports `kvs.net`, `kvs.client.cli` and the
generated stubs, never the store, replication or MQTT code. No other module imports it.
"""
