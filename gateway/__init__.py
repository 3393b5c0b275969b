"""Interoperability gateway for a national shared health record (DMP-style).

Data path: transport -> raw store -> parse -> map -> validate -> persist -> answer.
"""
