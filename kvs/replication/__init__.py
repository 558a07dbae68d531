"""What replicas say to each other, and when.

`sync` is the pure core (membership, catch-up, repair: events in, actions out), with
`peers`, `actions` and `sending`; `codec` and `topics` turn messages into bytes and
names; `adapter` (the `Replicator`) turns the core's actions into effects over an MQTT
session, and messages into events.

May import `kvs.storage`, `kvs.mqtt.loop` (the adapter only) and the shared modules.
"""
