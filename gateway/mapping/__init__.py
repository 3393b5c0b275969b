"""Pure functions from parsed input (a CDA header) to FHIR R4 resources as dicts."""
