"""Publishing once to an SFU over WHIP (RFC 9725), beside or instead of the room.

One concept per module:

* :mod:`.whip`: the HTTP protocol (POST the offer, DELETE the session,
  ``Link`` ICE servers, bounded requests, errors naming URL and status);
  pure of media;
* :mod:`.publisher`: :class:`~.publisher.Publisher`, the session: one
  RTCPeerConnection fed by the hub's shared encoding of the configured tier,
  re-published with back-off when it fails;
* :mod:`.state`: :class:`~.state.PublishState`, what observe shows of it.
"""
