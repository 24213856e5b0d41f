"""The ingest path: simpul.in.* to the central store, simpul.valid.* and the fan-out."""
