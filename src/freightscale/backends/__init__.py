"""Clients for the real services freightscale talks to."""
