"""A real S3 endpoint for tests: moto server mode on 127.0.0.1 (filled by the store work)."""
