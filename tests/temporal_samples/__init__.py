"""Ports of Temporal's official Python samples (temporalio/samples-python) to Cairn.

A port changes the API (imports, decorators, the class form to Cairn's function form where
needed), never the logic; each test asserts what the sample prints.
"""
