"""The operating side's HTTP face (issue 9): an ASGI application (Starlette) that the admin
server (net/http.py) serves. It talks to the services and the store, never to sockets."""
