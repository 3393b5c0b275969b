"""Service layer: the use cases (ingest a CDA, provide a document bundle), independent of transport."""
