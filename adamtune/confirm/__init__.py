"""confirm."""
