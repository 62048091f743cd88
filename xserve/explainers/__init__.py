"""Explainers: exact inline methods (TreeSHAP, LinearSHAP), job methods and reason codes.

Deliberately empty: importing ``xserve.explainers.base`` (the interface) must not load
the implementations, nor anything that imports the repository.
"""
