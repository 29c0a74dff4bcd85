"""Example applications built on freightscale."""
