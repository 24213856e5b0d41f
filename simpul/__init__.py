"""Simpul core: settings, topology, envelope, codec, schema registry storage, publisher and CLI."""

__version__ = "0.1.0"
