"""WebRTC peers: aiortc behind trio-asyncio, one PeerSession per participant.

This package is the only place where Trio and asyncio meet. aiortc calls are
made through ``trio_asyncio.aio_as_trio``; aiortc's callbacks become messages
on Trio memory channels; its errors are logged and turned into a reset of
the one peer they concern.
"""
