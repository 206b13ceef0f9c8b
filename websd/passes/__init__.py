"""Relax passes of our own, one per file; stages compose them with TVM's in one list."""
