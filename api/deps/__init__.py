"""FastAPI dependencies, one module per concern: session, auth (who calls), rate_limit, ownership."""
