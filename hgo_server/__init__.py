"""hgo_server: the asyncio gRPC parameter server."""
