"""Services the project starts for itself on one machine: Apache Kafka, the embedded broker and
a private PostgreSQL."""
