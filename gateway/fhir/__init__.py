"""The FHIR R4 API (base /fhir): one module per interaction, all reading through the repository.

`gateway.fhir.api` assembles the blueprint; importing this package alone loads no route.
"""
