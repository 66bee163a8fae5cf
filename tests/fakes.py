"""
Fakes for unit tests: an endpoint factory whose connections are in-memory
``StringTransport`` pairs the test drives by hand.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from zope.interface import implementer


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects a factory's protocol to a fresh ``StringTransport``."""

    def __init__(self, owner: FakeEndpointFactory, key: tuple[str, str, int]) -> None:
        self.owner = owner
        self.key = key

    def connect(self, factory: Any) -> Deferred[Any]:
        """Build the protocol and connect it to a transport at once."""
        protocol = factory.buildProtocol(IPv4Address("TCP", self.key[1], self.key[2]))
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", self.key[2]),
        )
        protocol.makeConnection(transport)
        self.owner.connections.append((protocol, transport))
        return succeed(protocol)


class FakeEndpointFactory:
    """
    An endpoint factory recording what was asked for and every connection.

    :ivar requested: ``(scheme, host, port)`` per endpoint asked for.
    :ivar connections: ``(protocol, transport)`` per connection made.
    """

    def __init__(self) -> None:
        self.requested: list[tuple[str, str, int]] = []
        self.connections: list[tuple[Any, StringTransport]] = []

    def __call__(self, scheme: str, host: str, port: int) -> FakeEndpoint:
        self.requested.append((scheme, host, port))
        return FakeEndpoint(self, (scheme, host, port))
