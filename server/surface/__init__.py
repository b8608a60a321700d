"""The MCP surface: the server object, its lifespan, and the tools and resources a host sees.

``app`` wires settings, store, toolsets and bridge into an ``MCPServer``; ``respond_tool`` publishes
``key4u_respond`` (its signature comes from ``RespondRequest``) and the transcript resource;
``local_tools`` publishes ``tools/``; ``proxy`` offers downstream tools to the host in proxy mode.
Transports (stdio, HTTP) are in ``server.transports``; nothing here runs a model turn.
"""
