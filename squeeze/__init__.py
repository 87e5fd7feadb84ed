"""squeeze: shared settings (and, later, the Python client)."""
