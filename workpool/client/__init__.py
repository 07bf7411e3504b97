"""The client actor: Workpool and its asyncio face. Clients only append requests to pendingStart
and read."""
