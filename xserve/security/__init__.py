"""Security: API keys with roles, kept only as digests."""
