"""The model API behind the gateway: the only package that knows URLs, headers and the wire format.

``responses`` is the ``/v1/responses`` client (JSON and SSE, retries, error mapping); ``wire`` holds
lenient models of the replies; ``translation`` converts between MCP tools and the API's function
tools. Nothing here stores a conversation or runs a tool.
"""
