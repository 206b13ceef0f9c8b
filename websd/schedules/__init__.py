"""Schedule rules of our own, one per file; apply_db composes them with dlight's in one list."""
