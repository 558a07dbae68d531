"""Stubs generated from proto/ by compile.sh. Never edit them by hand."""
