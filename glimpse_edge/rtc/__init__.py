"""WebRTC peers: aiortc behind trio-asyncio, one PeerSession per participant.

Trio and asyncio meet in one module, :mod:`.aio` (the bridge): aiortc's
coroutines are awaited through ``call_aio``, its events become messages for
Trio tasks through ``on_aio_event``, packets cross on futures; its errors are
logged and turned into a reset of the one peer they concern. Every use of
aiortc's (and aioice's) internals is in :mod:`.compat`, checked at start-up.
"""
