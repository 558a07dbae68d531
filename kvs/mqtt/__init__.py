"""The broker connection (`session` over paho, driven by `loop`) and the private broker a
server starts for itself (`broker`).

Knows nothing of the store or of replication messages; imports only the shared modules.
"""
