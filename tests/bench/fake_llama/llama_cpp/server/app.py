"""What `import llama_cpp.server.app` finds (the bench's check that the server can run)."""
