"""How the server is reached: stdio (what MCP hosts spawn) and Streamable HTTP (the service).

``stdio`` runs the server on stdin/stdout with line limits and a clean exit when stdin closes;
``http`` serves it with a bearer token, origin checks and health endpoints; ``asgi_thread`` runs an
ASGI app on a thread (the HTTP tests and the demo use it). No tool logic lives here.
"""
