"""FreightOps: the example multi-tenant freight-operations app.

Today it is a seed (one JSON route inside ``build_stack``); later issues grow
it into the full app that composes every freightscale component.
"""
