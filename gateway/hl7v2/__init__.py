"""HL7v2 feeds: reading ER7, acknowledgements, MLLP transport."""
