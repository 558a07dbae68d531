"""The Admin service (`service`: a server's view of its own replica, read through the
`Replica` protocol) and, apart, the admin command line (`cli`, `scripts/admin.sh`).

The service may import the store; it reads the replica only through `Replica`, so it
imports no replication code. The command line is a gRPC client only: it imports
`kvs.net`, `kvs.client.api` and the generated stubs, never the store, replication or
MQTT code, and no module of kvs imports it (scripts/admin.sh runs `python -m
kvs.admin.cli`). tests/unit/test_layout.py checks both from the imports. The live view
(`web`, run by `admin.sh web`; `view`, its pure part; its page in `static/`) is a
client in the same way, on aiohttp and gRPC aio.
"""
