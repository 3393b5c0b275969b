"""Persistence: resources with versions, search index rows, binaries by hash, raw inputs."""
