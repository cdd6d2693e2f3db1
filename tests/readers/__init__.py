"""Tests of storage.readers and storage.geometry."""
