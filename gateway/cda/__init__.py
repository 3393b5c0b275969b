"""Reading CDA R2 documents: safe XML parsing and CI-SIS header extraction."""
