"""Placeholder until this area lands."""

NODES = []
