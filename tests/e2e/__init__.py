"""End-to-end tests: real sockets on 127.0.0.1."""
