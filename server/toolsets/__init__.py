"""Toolsets: who offers the tools the remote model may call, and who runs each call.

A ``Toolset`` lists ``OfferedTool``s; each offered tool carries its owner, so a call goes to the
toolset that offered it and is never routed by its name. Local tools, each downstream MCP server
(``hub``) and the caller's functions are toolsets; prefixes and policy are wrappers around one.
"""
