"""The bridge core: one ``key4u_respond`` conversation from request to result.

``service.Bridge`` starts, continues and waits for conversations; ``plan`` decides what the model is
offered; ``loop`` runs the model turns and the tool calls; ``jobs`` runs loops in the background under
a store claim; ``continuation`` holds the rules for a follow-up call; ``conversation`` and ``request``
are the data. Nothing here speaks MCP to the host or knows a URL: the surface and the upstream do.
"""
