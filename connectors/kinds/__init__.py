"""The connector kinds, registered as `simpul.connectors` entry points: database, file drop,
HTTP and REST sources."""
