"""Local clusters on one machine: mosquitto brokers and kvs servers as child processes.

`processes` starts them (`LocalBroker`, `LocalServer`, on loopback ports reserved
until they are used: `reserve_port`) and always stops them by PID; `cluster` is
`scripts/cluster.sh N`, a broker and N servers for demos and teaching; `sites` runs
a broker per site on its own loopback address, bridged (kvs.mqtt.bridge) through a
`linkproxy` that can cut, delay or stall the link. The tests and the benchmark start
their processes here too.

Brokers are configured by `kvs.mqtt.broker` (the private broker's own settings);
servers are started as processes (`python -m kvs.server`), so this package imports
`kvs.mqtt.broker`, `kvs.mqtt.bridge`, `kvs.admin.parts`, `kvs.net` and the generated
stubs, never the server's, the store's or replication's code.
"""
