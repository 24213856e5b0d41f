"""The schema registry: storage in the central store, the cached resolver, its HTTP client, the
Confluent REST API and compatibility."""
