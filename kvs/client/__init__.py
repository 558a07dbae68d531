"""`kvs.Client`, the Python client (`api`), and the command-line client (`cli`, `./client.sh`).

Imports only `kvs.net` and the generated stubs.
"""
