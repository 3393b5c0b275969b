"""Non-FHIR HTTP entry points: direct CDA upload, health and metrics."""
