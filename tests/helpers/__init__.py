"""Shared builders for tests (tiny random models, small corpora)."""
